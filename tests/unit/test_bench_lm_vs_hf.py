"""scripts/bench/lm_vs_hf.py: the side-by-side benchmark against Hugging Face's LlamaForCausalLM
runs end to end on tiny shapes (--smoke), both sides train the same parameter count, and its
summary computes medians, spreads and ratios as documented. Speed and memory are not asserted."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "bench"))
import lm_vs_hf  # noqa: E402


def sample(label, precision, rep, step, rss, held, params=100):
    return {"label": label, "side": "hf" if label == "hf" else "memtrain", "precision": precision, "checkpoint": "none",
            "rep": rep, "params": params, "step_s": [step, step * 3], "tokens_per_s": 1000 / (2 * step),
            "peak_rss_delta": rss, "held_after_forward": held, "cuda_peak": None, "mfu": None}


def test_summary_reports_medians_spreads_and_ratios():
    samples = [sample("memtrain", "bf16", r, s, rss, 10) for r, (s, rss) in enumerate([(1.0, 80), (2.0, 70), (1.5, 90)])]
    samples += [sample("hf", "bf16", r, s, rss, 20) for r, (s, rss) in enumerate([(2.0, 100), (4.0, 100), (3.0, 100)])]
    rows = lm_vs_hf.summarize(samples, ["memtrain", "hf"])
    mt, hf = rows
    assert (mt["side"], hf["side"]) == ("memtrain", "hf")
    # a sample's step time is the median of its timed steps (here step and 3 step: 2 step)
    assert mt["step_s"] == {"median": 3.0, "min": 2.0, "max": 4.0, "n": 3}
    assert mt["peak_rss_delta"] == {"median": 80, "min": 70, "max": 90, "n": 3}
    assert mt["ratio"]["step_s"] == pytest.approx(0.5)
    assert mt["ratio"]["peak_rss_delta"] == pytest.approx(0.8)
    assert mt["ratio"]["held_after_forward"] == pytest.approx(0.5)
    assert "cuda_peak" not in mt["ratio"] and "ratio" not in hf
    table = lm_vs_hf.markdown({"rows": rows})
    assert "| bf16 | none | memtrain |" in table and "| 0.500 | 0.800 | 0.500 |" in table


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the HF side needs transformers")
def test_smoke_run_measures_both_sides_in_fresh_processes(tmp_path):
    out = tmp_path / "result.json"
    assert lm_vs_hf.main(["--smoke", "--modes", "bf16/full", "--json", str(out), "--markdown", str(tmp_path / "t.md")]) == 0
    result = json.loads(out.read_text())
    assert [(s["label"], s["precision"], s["checkpoint"]) for s in result["samples"]] == [
        ("memtrain", "bf16", "full"), ("hf", "bf16", "full")]
    mt, hf = result["samples"]
    assert mt["params"] == hf["params"] > 0  # the same shape on both sides
    for s in (mt, hf):
        assert len(s["step_s"]) == 2 and all(t > 0 for t in s["step_s"])
        assert s["peak_rss_delta"] > 0 and s["held_after_forward"] > 0
    assert set(result["rows"][0]["ratio"]) == {"step_s", "tokens_per_s", "peak_rss_delta", "held_after_forward"}
    assert "memtrain" in (tmp_path / "t.md").read_text()
