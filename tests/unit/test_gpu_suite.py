"""scripts/bench/gpu_suite.py (one bounded run of every owed GPU benchmark) and
scripts/bench/update_benchmarks.py (its figures into docs/benchmarks.md).

The fast tests run the suite's runner on stand-in parts (tests/unit/gpu_suite_fakes.py), each in
its own process as a real part runs: budgets, kills, failures, skips, the JSON and Markdown it
writes, and the doc update from that JSON. The slow test runs the real suite with --smoke (every
default part, tiny shapes on the CPU) and writes its JSON into a copy of docs/benchmarks.md.
Speed and memory figures are not asserted anywhere."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memtrain.data.sequences import default_protein_root
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "bench"))
import gpu_suite  # noqa: E402
import update_benchmarks  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
PROTEIN_DATA = default_protein_root().is_dir()
FAKES = "tests.unit.gpu_suite_fakes"


def fake(name: str, func: str, budget: float = 60.0, needs: tuple[str, ...] = ()) -> gpu_suite.Part:
    """A stand-in with a real part's name and columns (so the doc has its place) running `func`."""
    return dataclasses.replace(gpu_suite.BY_NAME[name], target=f"{FAKES}:{func}", budget_s=budget, smoke_budget_s=budget,
                               needs=needs)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """One suite run over stand-ins: ok, killed at its budget, failing, missing a module, skipping
    inside, over the suite's budget."""
    tmp = tmp_path_factory.mktemp("suite")
    os.environ["GPU_SUITE_FAKE_PID_FILE"] = str(tmp / "child.pid")
    parts = [fake("fp8_linear", "two_rows"), fake("lm_vs_hf", "hangs", budget=3.0), fake("weather_step", "fails"),
             fake("calibration", "two_rows", needs=("no_such_module_for_the_suite",)),
             fake("evoformer_block", "skips_inside"), fake("data_parallel", "two_rows", budget=10_000)]
    lines = []
    t0 = time.time()
    try:
        result = gpu_suite.run_suite(parts, tmp / "out", smoke=True, budget_s=1_000,
                                     command="python3 scripts/bench/gpu_suite.py --smoke", grace_s=0.5, echo=lines.append)
    finally:
        del os.environ["GPU_SUITE_FAKE_PID_FILE"]
    return {"result": result, "out": tmp / "out", "seconds": time.time() - t0, "lines": lines,
            "child": int((tmp / "child.pid").read_text())}


def by_name(result: dict) -> dict:
    return {e["name"]: e for e in result["parts"]}


def test_default_parts_fit_one_lease():
    parts = [p for p in gpu_suite.PARTS if p.default]
    names = [p.name for p in parts]
    assert names == ["evoformer_attention", "evoformer_block", "lm_vs_hf", "data_parallel", "weather_step",
                     "fp8_linear", "calibration"]
    # the budget: about 8 minutes of GPU time in all; and one device call (600 s at most)
    # must hold the suite, every part's kill grace and the parent's own start
    assert sum(p.budget_s for p in parts) <= gpu_suite.DEFAULT_BUDGET_S <= 480
    assert gpu_suite.DEFAULT_BUDGET_S + len(parts) * gpu_suite.GRACE_S + 30 <= 600
    for part in gpu_suite.PARTS:
        module, func = part.target.split(":")
        assert module == "gpu_suite" and callable(getattr(gpu_suite, func)), part.target
        assert part.columns and part.command.startswith("python")


def test_doc_has_a_place_and_a_budget_line_for_every_part():
    text = DOC.read_text()
    for part in gpu_suite.PARTS:
        assert f"<!-- gpu-suite:{part.name} -->" in text and f"<!-- /gpu-suite:{part.name} -->" in text, part.name
        row = next(line for line in text.splitlines() if line.startswith(f"| `{part.name}`"))
        assert row.rstrip().endswith(f"| {part.budget_s:.0f} |"), row
    assert "<!-- gpu-suite:summary -->" in text


def test_runner_statuses(fake_run):
    parts = by_name(fake_run["result"])
    assert [e["status"] for e in fake_run["result"]["parts"]] == ["ok", "timeout", "failed", "skipped", "partial", "skipped"]
    ok, hung, failed, missing, partial, too_big = fake_run["result"]["parts"]
    assert [r["precision"] for r in ok["rows"]] == ["bf16", "fp8"] and ok["message"] == ""
    # killed at its budget + grace, the row it had recorded kept, its child process killed too
    assert hung["rows"] == [{"precision": "bf16", "tokens_per_s": 1.0}] and "killed" in hung["message"]
    assert 3.0 <= hung["seconds"] < 30
    deadline = time.time() + 5
    while pid_alive(fake_run["child"]) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(fake_run["child"])
    assert "RuntimeError: the fake part broke here" in failed["message"] and "about to fail" in failed["log_tail"]
    assert missing["message"] == "needs no_such_module_for_the_suite (not importable here)" and not missing["rows"]
    assert partial["skipped"] == [{"what": "the next measurement", "why": partial["skipped"][0]["why"]}]
    assert "skipped the next measurement: needs about 1000000000 s" in partial["message"]
    assert too_big["message"].startswith("its budget 10000 s exceeds the") and too_big["seconds"] == 0
    assert parts["fp8_linear"]["meta"]["device"] == fake_run["result"]["meta"]["device"] == "Fake GPU 80GB"
    assert fake_run["seconds"] < 60


def test_runner_files(fake_run):
    out = fake_run["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_suite.FILES)
    assert json.loads((out / "gpu_suite.json").read_text()) == json.loads(json.dumps(fake_run["result"], default=str))
    md = (out / "gpu_suite.md").read_text()
    assert "| bf16 | 12,346 | 3.00 | n/a | n/a |  |" in md  # tokens/s, GiB, no ratio on the base row
    assert "| fp8 | 18,518 | 2.50 | 1.500 | 0.833 |  |" in md
    assert "| weather_step | failed |" in md and "| calibration | skipped |" in md
    log = (out / "gpu_suite.log").read_text()
    assert "===== weather_step" in log and "about to fail" in log
    assert any(line.startswith("lm_vs_hf: timeout") for line in fake_run["lines"])


def test_a_part_whose_runner_is_gone_ends_itself(tmp_path, monkeypatch):
    """A part process (its own session, as run_part starts it) kills itself and its children at
    twice the grace past its deadline, so a killed runner leaves nothing running."""
    monkeypatch.setenv("GPU_SUITE_FAKE_PID_FILE", str(tmp_path / "child.pid"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cmd = [sys.executable, str(REPO / "scripts" / "bench" / "gpu_suite.py"), "--worker", f"{FAKES}:hangs",
           "--result", str(tmp_path / "part.json"), "--deadline", repr(time.time() + 3), "--grace", "0.5"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        assert proc.wait(timeout=60) == -9  # SIGKILL from its own alarm, not from this test
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.time() + 5
    while pid_alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)
    assert json.loads((tmp_path / "part.json").read_text())["rows"] == [{"precision": "bf16", "tokens_per_s": 1.0}]


def test_autotune_choices_are_parsed():
    log = ("noise\nTriton autotuning for function _fwd_kernel,\nwith key as (384, 384, 32, True, True),\n"
           "finished after 3.25s,\nbest config selected: BLOCK_M: 128, BLOCK_N: 64, num_warps: 4, num_stages: 3;\n"
           "Triton autotuning for function _dbias_kernel finished after 1.50s; best config selected: BLOCK_M: 64;\n")
    assert gpu_suite.autotune_choices(log) == [
        {"function": "_fwd_kernel", "key": "(384, 384, 32, True, True)", "seconds": "3.25",
         "best": "BLOCK_M: 128, BLOCK_N: 64, num_warps: 4, num_stages: 3"},
        {"function": "_dbias_kernel", "key": None, "seconds": "1.50", "best": "BLOCK_M: 64"}]


def blocks(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in update_benchmarks.BLOCK.finditer(text)}


def outside(text: str) -> str:
    return update_benchmarks.BLOCK.sub("<block>", text)


def test_update_writes_the_parts_with_rows_into_a_copy_of_the_doc(fake_run, tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC.read_text())
    before = doc.read_text()
    assert update_benchmarks.main([str(fake_run["out"] / "gpu_suite.json"), "--doc", str(doc), "--allow-smoke"]) == 0
    after = doc.read_text()
    assert outside(after) == outside(before)  # only the text between markers changed
    old, new = blocks(before), blocks(after)
    for name in ("fp8_linear", "lm_vs_hf", "evoformer_block", "summary"):  # the parts that recorded rows
        assert "not yet measured" in old[name].lower() or name == "summary"
        assert "not yet measured" not in new[name].lower()
    for name in ("weather_step", "calibration", "data_parallel", "evoformer_attention", "lm_compile", "gpu_tests"):
        assert new[name] == old[name], name
    date = fake_run["result"]["meta"]["date"][:10]
    assert new["fp8_linear"].startswith(f"Smoke run {date} on Fake GPU 80GB (torch 2.11.0+cu130, cuda 13.0)")
    assert "\n    python3 scripts/bench/gpu_suite.py --smoke  # the CPU check of the suite, not a measurement\n" \
        in new["fp8_linear"]
    assert "| fp8 | 18,518 | 2.50 | 1.500 | 0.833 |  |" in new["fp8_linear"]
    assert "Skipped: the next measurement (needs about" in new["evoformer_block"]
    assert "| weather_step | failed |" in new["summary"]
    assert "left as they were: weather_step (failed" in capsys.readouterr().out
    # a second run of the same JSON changes nothing
    assert update_benchmarks.main([str(fake_run["out"] / "gpu_suite.json"), "--doc", str(doc), "--allow-smoke"]) == 0
    assert doc.read_text() == after


def test_update_of_a_gpu_run_says_measured_and_adds_only_commands_that_need_a_gpu(fake_run, tmp_path, monkeypatch):
    result = json.loads((fake_run["out"] / "gpu_suite.json").read_text())
    result["meta"].update(smoke=False, command="python3 scripts/bench/gpu_suite.py --parts fp8_linear lm_vs_hf",
                          git_commit="abc123")
    path = tmp_path / "gpu_suite.json"
    path.write_text(json.dumps(result))
    docs = tmp_path / "docs"
    docs.mkdir()
    doc = docs / "benchmarks.md"
    doc.write_text(DOC.read_text())
    assert update_benchmarks.main([str(path), "--doc", str(doc)]) == 0
    block = blocks(doc.read_text())["fp8_linear"]
    assert block.startswith(f"Measured {result['meta']['date'][:10]} on Fake GPU 80GB (torch 2.11.0+cu130, cuda 13.0), "
                            "commit abc123 by the GPU suite (part `fp8_linear`: ok, ")
    assert "\n    python3 scripts/bench/gpu_suite.py --parts fp8_linear lm_vs_hf  # needs a GPU\n" in block
    assert f"\n    {gpu_suite.BY_NAME['fp8_linear'].command}  # needs a GPU\n" in block
    # every command the update adds is one that the documented-commands test expects to refuse
    # at once without a GPU, not one it runs as written
    from tests.integration import test_documented_commands as documented

    monkeypatch.setattr(documented, "REPO", tmp_path)
    monkeypatch.setattr(documented, "DOC_FILES", [doc])
    after = documented.documented_commands()
    doc.write_text(DOC.read_text())
    before = {(d.command, d.comment) for d in documented.documented_commands()}
    added = [d for d in after if (d.command, d.comment) not in before]
    assert {d.command for d in added} == {result["meta"]["command"]}, added
    assert all(documented.NEEDS.search(d.comment) for d in added), added


def test_update_refuses_bad_input_with_exit_2(fake_run, tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC.read_text())
    before = doc.read_text()
    good = str(fake_run["out"] / "gpu_suite.json")
    # a smoke run is not a measurement
    assert update_benchmarks.main([good, "--doc", str(doc)]) == 2
    assert "meta.smoke is true" in capsys.readouterr().err
    # not JSON, another schema, a missing key
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert update_benchmarks.main([str(bad), "--doc", str(doc), "--allow-smoke"]) == 2
    assert "not a JSON file" in capsys.readouterr().err
    bad.write_text(json.dumps({"schema": "other/9", "meta": {}, "parts": []}))
    assert update_benchmarks.main([str(bad), "--doc", str(doc), "--allow-smoke"]) == 2
    assert "key 'schema' is 'other/9'" in capsys.readouterr().err
    bad.write_text(json.dumps({"schema": gpu_suite.SCHEMA, "meta": {"date": "x"}, "parts": []}))
    assert update_benchmarks.main([str(bad), "--doc", str(doc), "--allow-smoke"]) == 2
    assert "missing key(s) meta.command, meta.smoke" in capsys.readouterr().err
    # a doc without the place for a part that has rows, and broken markers
    for broken, message in [(before.replace("<!-- gpu-suite:fp8_linear -->\n", ""), "no place for part(s) fp8_linear"),
                            (before.replace("<!-- /gpu-suite:lm_vs_hf -->", ""), "no '<!-- /gpu-suite:lm_vs_hf -->'")]:
        doc.write_text(broken)
        assert update_benchmarks.main([good, "--doc", str(doc), "--allow-smoke"]) == 2
        assert message in capsys.readouterr().err
        assert doc.read_text() == broken
    # --check prints the diff and writes nothing
    doc.write_text(before)
    assert update_benchmarks.main([good, "--doc", str(doc), "--allow-smoke", "--check"]) == 0
    assert "+| fp8 | 18,518 |" in capsys.readouterr().out and doc.read_text() == before


def test_part_selection_and_budgets():
    assert [p.name for p in gpu_suite.select_parts(["calibration", "gpu_tests"])] == ["calibration", "gpu_tests"]
    parts = gpu_suite.select_parts(None, ["data_parallel=240"])
    assert [p.budget_s for p in parts if p.name == "data_parallel"] == [240.0]
    assert [p.budget_s for p in parts if p.name == "calibration"] == [gpu_suite.BY_NAME["calibration"].budget_s]


def test_command_line_refusals():
    run = [sys.executable, str(REPO / "scripts" / "bench" / "gpu_suite.py")]
    for args, message in [(["--parts", "nope"], "unknown part(s) nope"),
                          (["--part-budget", "calibration=-3"], "--part-budget 'calibration=-3': expected NAME=SECONDS")]:
        proc = subprocess.run([*run, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*run, "--list"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and all(p.name in proc.stdout for p in gpu_suite.PARTS)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_smoke_run_of_every_default_part_and_its_doc_update(tmp_path):
    """The real suite, --smoke: every default part runs its benchmark code on the CPU with tiny
    shapes (the Triton kernels in the interpreter) and records rows; its JSON updates a copy of the doc."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=3500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu_suite.json").read_text())
    parts = by_name(result)
    assert list(parts) == [p.name for p in gpu_suite.PARTS if p.default]
    assert result["meta"]["smoke"] and result["meta"]["device"] == "cpu"
    for name, entry in parts.items():
        # fp8 GEMMs are refused on a CPU; without the protein data the AlphaFold rows are skipped
        expected = "partial" if name == "fp8_linear" or (name == "calibration" and not PROTEIN_DATA) else "ok"
        assert entry["status"] == expected, (name, entry["message"], entry["log_tail"])
        assert entry["rows"], name
    for row in parts["evoformer_attention"]["rows"]:  # fp32 in the interpreter vs fp64
        assert row["correct"] and row["triton_max_rel_err"] < 1e-5 and row["triton_ms"] > 0
    assert [r["variant"] for r in parts["evoformer_block"]["rows"]][0].startswith("plain")
    assert all(r["ms"] > 0 for r in parts["evoformer_block"]["rows"])
    sides = {r["side"]: r for r in parts["lm_vs_hf"]["rows"]}
    assert {"memtrain", "hf"} <= set(sides) and sides["memtrain"]["params"] == sides["hf"]["params"]
    assert all(r["tokens_per_s"] > 0 for r in sides.values())
    assert len(parts["data_parallel"]["rows"]) == 5 and all(not r["error"] for r in parts["data_parallel"]["rows"])
    assert len(parts["weather_step"]["rows"]) == 4 and all(r["step_s"] > 0 for r in parts["weather_step"]["rows"])
    fp8 = parts["fp8_linear"]["rows"]
    assert fp8[0]["tokens_per_s"] > 0 and "fp8" in fp8[1]["error"].lower()
    calibration = parts["calibration"]["rows"]
    assert all(r["measured_bytes"] > 0 and r["predicted_bytes"] > 0 for r in calibration)
    # five configurations (no offload on a CPU) per tiny model; AlphaFold's need the protein data
    assert len(calibration) == (10 if PROTEIN_DATA else 5)

    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC.read_text())
    assert update_benchmarks.main([str(out / "gpu_suite.json"), "--doc", str(doc), "--allow-smoke"]) == 0
    new = blocks(doc.read_text())
    for name, entry in parts.items():
        assert "not yet measured" not in new[name].lower(), name
        assert re.search(rf"\(part `{name}`: {entry['status']}\)", new[name]), name
        header = next(c.header for c in gpu_suite.BY_NAME[name].columns)
        assert f"| {header} |" in new[name]
