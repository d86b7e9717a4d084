"""Write the figures of a GPU suite run (scripts/bench/gpu_suite.py's gpu_suite.json) into
docs/benchmarks.md.

    python3 scripts/bench/update_benchmarks.py OUT/gpu_suite.json            # then review and commit
    python3 scripts/bench/update_benchmarks.py OUT/gpu_suite.json --check    # print what would change

docs/benchmarks.md marks the place of each part's figures with a pair of comments,

    <!-- gpu-suite:PART -->
    (the "not yet measured" rows; after a run, its block)
    <!-- /gpu-suite:PART -->

and the place of the run's summary with `gpu-suite:summary`. For every part of the run that
recorded rows, the text between its markers becomes the part's block: date, device and versions
(and the commit, when the run saw one), the suite's command and the standalone one, the table of
figures with its ratios, what was skipped and why, and Triton's autotuning choices. A part without
rows (skipped, or failed before its first row) leaves its place as it was, so an earlier
measurement stays. A smoke run (--smoke: tiny shapes on a CPU, not a measurement) is refused unless
--allow-smoke is given (the tests use that, on a copy of the doc).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite  # noqa: E402  (beside this file)

DOC = gpu_suite.REPO / "docs" / "benchmarks.md"
BEGIN = re.compile(r"<!-- gpu-suite:(?P<name>[\w-]+) -->")
BLOCK = re.compile(r"<!-- gpu-suite:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /gpu-suite:(?P=name) -->", re.S)


class UpdateError(Exception):
    """Input that cannot be written into the doc; the message names the file and the keys."""


def load_result(path: Path, allow_smoke: bool) -> dict:
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise UpdateError(f"{path}: no such file. Pass the gpu_suite.json that scripts/bench/gpu_suite.py wrote.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpdateError(f"{path}: not a JSON file ({exc}).") from None
    if not isinstance(result, dict) or result.get("schema") != gpu_suite.SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise UpdateError(f"{path}: key 'schema' is {found!r}, expected {gpu_suite.SCHEMA!r}: this is not a "
                          "gpu_suite.json of this version of scripts/bench/gpu_suite.py.")
    missing = [k for k in ("meta", "parts") if k not in result] + \
              [f"meta.{k}" for k in ("date", "command", "smoke") if k not in result.get("meta", {})]
    if missing:
        raise UpdateError(f"{path}: missing key(s) {', '.join(missing)}.")
    if result["meta"]["smoke"] and not allow_smoke:
        raise UpdateError(f"{path}: a smoke run (meta.smoke is true: tiny shapes on a CPU) measures nothing and is not "
                          "written into the docs. Run the suite without --smoke on the GPU machine (or pass "
                          "--allow-smoke to write it into a copy of the doc, as the tests do).")
    return result


def update_text(text: str, result: dict) -> tuple[str, list[str], list[str]]:
    """The doc with the run's blocks between their markers; the parts written; the parts left."""
    begins = [m.group("name") for m in BEGIN.finditer(text)]
    blocks = [m.group("name") for m in BLOCK.finditer(text)]
    unclosed = sorted(set(begins) - set(blocks))
    repeated = sorted({n for n in begins if begins.count(n) > 1})
    if unclosed or repeated:
        raise UpdateError("the doc's gpu-suite markers are broken: "
                          + "; ".join([f"no '<!-- /gpu-suite:{n} -->' after '<!-- gpu-suite:{n} -->'" for n in unclosed]
                                      + [f"'<!-- gpu-suite:{n} -->' appears more than once" for n in repeated]) + ".")
    blocks_new = {"summary": gpu_suite.render_summary(result)}
    left = []
    for entry in result["parts"]:
        if entry["rows"]:
            blocks_new[entry["name"]] = gpu_suite.render_part(entry, result["meta"])
        else:
            left.append(f"{entry['name']} ({entry['status']}: {entry['message'] or 'no rows'})")
    missing = [name for name in blocks_new if name not in blocks]
    if missing:
        raise UpdateError(f"the doc has no place for part(s) {', '.join(missing)}: add '<!-- gpu-suite:NAME -->' and "
                          "'<!-- /gpu-suite:NAME -->' lines where their figures belong.")

    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in blocks_new:
            return m.group(0)
        return f"<!-- gpu-suite:{name} -->\n{blocks_new[name]}<!-- /gpu-suite:{name} -->"

    written = [n for n in blocks_new if n != "summary"]
    return BLOCK.sub(replace, text), written, left


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", type=Path, help="gpu_suite.json")
    p.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to update (default docs/benchmarks.md)")
    p.add_argument("--check", action="store_true", help="print the changes as a diff, write nothing")
    p.add_argument("--allow-smoke", action="store_true", help="write a smoke run's figures too (for a copy of the doc)")
    args = p.parse_args(argv)
    try:
        result = load_result(args.result, args.allow_smoke)
        try:
            text = args.doc.read_text()
        except FileNotFoundError:
            raise UpdateError(f"{args.doc}: no such file (--doc names the Markdown file to update).") from None
        new, written, left = update_text(text, result)
    except UpdateError as exc:
        print(f"update_benchmarks: {exc}", file=sys.stderr)
        return 2
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(args.doc), str(args.doc)))
    elif new != text:
        tmp = args.doc.with_name(args.doc.name + ".tmp")
        tmp.write_text(new)
        os.replace(tmp, args.doc)
    print(f"{'would write' if args.check else 'wrote'} {', '.join(written) or 'no part'} (and the summary) into {args.doc}")
    if left:
        print("left as they were: " + "; ".join(left))
    return 0


if __name__ == "__main__":
    sys.exit(main())
