"""The package layering of memtrain: no two packages import each other, and no longer cycle.

Every `import memtrain...` and `from memtrain... import` in every module under memtrain/ counts,
at the top of a file or inside a function, re-exports included. A module's package is its first
component under memtrain/ (memtrain/config/validate.py -> config); a top-level module is a package
of its own (memtrain/cli.py -> cli). The layers, from the bottom:

    errors, safe_pickle, protein   the user-error base class, the safe unpickler, protein geometry
                                   (residue tables, frames, all-atom conversions)
    config                         schema, errors, loader, validation and the light tables it reads:
                                   parallel options, mesh degrees and world size, pipeline schedules,
                                   optimizer, quantization and kernel checks, the model-family table
                                   and the ModelSpec registry (config/families.py: `get_spec` imports
                                   a family's spec module by the name its family.py declares)
    distributed, kernels,          communication primitives, Triton kernels,
    optim, data                    optimizers, data pipelines
    models                         model families (spec, model, parallelize, FLOPs), activation
                                   checkpointing and chunking
    precision, prereq              precision transforms and the export format; checks of this machine
    engine, submit                 strategies, checkpoints, `memtrain export`, the trainer;
                                   `memtrain submit`
    memory                         estimate and plan (which may run the trainer to measure)
    cli                            the command line (its help texts: cli_help, which imports nothing)
    slurm                          the processes Slurm starts (each rank runs the command line)

(docs/architecture.md, "Package layers").
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "memtrain"


def _package(module: str) -> str | None:
    """The package of dotted `module` under memtrain (None for the memtrain package itself)."""
    parts = module.split(".")
    if parts[0] != "memtrain" or len(parts) == 1:
        return None
    return parts[1]


def package_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: ["path:line", ...]}} of every memtrain import in `root`."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        source = _package(".".join(rel.parts).removesuffix(".__init__"))
        if source is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
                if node.module == "memtrain":  # from memtrain import cli
                    targets = [f"memtrain.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                dest = _package(target)
                if dest is not None and dest != source:
                    graph.setdefault(source, {}).setdefault(dest, []).append(f"{rel}.py:{node.lineno}")
    return graph


def mutual_pairs(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """'a <-> b (a's imports of b; b's imports of a)' for every pair of packages importing each other."""
    return [f"{a} <-> {b} ({', '.join(graph[a][b])}; {', '.join(graph[b][a])})"
            for a in sorted(graph) for b in sorted(graph[a]) if a < b and a in graph.get(b, {})]


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Top-level, function-level, `import a.b` and `from memtrain import x` imports all count, and
    a three-package cycle is found that has no mutual pair."""
    pkg = tmp_path / "memtrain"
    for name in ("a", "b", "c"):
        (pkg / name).mkdir(parents=True)
        (pkg / name / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("import memtrain.b.y\n")
    (pkg / "b" / "y.py").write_text("def f():\n    from memtrain.c import z\n")
    (pkg / "c" / "z.py").write_text("from memtrain import a\n")
    graph = package_graph(pkg)
    assert {a: sorted(b) for a, b in graph.items()} == {"a": ["b"], "b": ["c"], "c": ["a"]}
    assert mutual_pairs(graph) == []
    assert cycles(graph) == [["a", "b", "c"]]
    (pkg / "b" / "w.py").write_text("from memtrain.a.x import f  # a re-export counts too\n")
    assert mutual_pairs(package_graph(pkg)) == ["a <-> b (memtrain/a/x.py:1; memtrain/b/w.py:1)"]


def test_no_two_packages_import_each_other():
    assert mutual_pairs(package_graph()) == []


def test_the_package_graph_has_no_cycle():
    assert cycles(package_graph()) == []


def test_config_imports_no_other_package():
    """config is the bottom layer: besides itself it reads only memtrain.errors (the base class of
    its ConfigError)."""
    assert sorted(package_graph().get("config", {})) in ([], ["errors"])
