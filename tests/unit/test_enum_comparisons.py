"""Config enums are compared as members, never as strings.

The schema (memtrain.config.schema) and the families (memtrain/models/*/family.py) declare the
choices of a key as an Enum. Code reads such a value with memtrain.config.errors.as_enum and
compares members (`as_enum(cfg.trainer.device, Device) is Device.cpu`): a misspelt member is an
AttributeError where the line runs, and the scan below finds it where no test runs the line. A
string comparison (`name == "cpu"`) with a misspelt name is silently False; the scan refuses every
comparison of an enum-typed config value, or a variable holding one, with a string.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memtrain.config.errors import as_enum
from memtrain.config.schema import ACMode, Device, DType

SRC = Path(__file__).resolve().parents[2] / "memtrain"


# -- as_enum ----------------------------------------------------------------------------------------


def test_as_enum_takes_a_member_or_its_name():
    assert as_enum(Device.cpu, Device) is Device.cpu
    assert as_enum("cpu", Device) is Device.cpu
    assert as_enum("bfloat16", DType) is DType.bfloat16


def test_as_enum_refuses_an_unknown_name_naming_the_enum_and_its_members():
    with pytest.raises(ValueError) as err:
        as_enum("cpux", Device)
    assert "'cpux'" in str(err.value) and "Device" in str(err.value) and "auto, cpu, cuda" in str(err.value)


@pytest.mark.parametrize("value", [ACMode.full, 1, None, b"cpu"])
def test_as_enum_refuses_another_enum_s_member_or_a_non_string(value):
    with pytest.raises(TypeError) as err:
        as_enum(value, Device)
    assert "Device" in str(err.value) and repr(value) in str(err.value)


# -- the scan ---------------------------------------------------------------------------------------


@dataclass
class Enums:
    """Every Enum class defined under memtrain/ (by module and name, with its members' names and
    values), and the config fields typed by one (field name -> the enums that type it)."""

    members: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    fields: dict[str, set[tuple[str, str]]] = field(default_factory=dict)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _is_enum_class(node: ast.ClassDef) -> bool:
    return any(isinstance(b, ast.Name) and b.id == "Enum" or isinstance(b, ast.Attribute) and b.attr == "Enum"
               for b in node.bases)


def _names_in(annotation: ast.AST | None) -> set[str]:
    """The bare names an annotation mentions (`ACMode | str`, `Optional[DType]`, or a string of one)."""
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval")
        except SyntaxError:
            return set()
    return {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)}


def _imports(tree: ast.Module, module: str) -> dict[str, tuple[str, str]]:
    """Local name -> (module, name) for every `from X import Y [as Z]` in the file (functions
    included; relative imports resolved) and every class the file defines."""
    table = {node.name: (module, node.name) for node in tree.body if isinstance(node, ast.ClassDef)}
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            source = node.module if node.level == 0 else ".".join(
                [*package.split(".")[: len(package.split(".")) - node.level + 1], node.module])
            for alias in node.names:
                table[alias.asname or alias.name] = (source, alias.name)
    return table


def _resolve(enums: Enums, table: dict[str, tuple[str, str]], name: str) -> tuple[str, str] | None:
    key = table.get(name)
    return key if key is not None and key in enums.members else None


def collect_enums(root: Path) -> Enums:
    enums = Enums()
    trees = {_module_name(p, root): ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}
    for module, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and _is_enum_class(node):
                enums.members[module, node.name] = {
                    t.id: stmt.value.value if isinstance(stmt.value, ast.Constant) else None
                    for stmt in node.body if isinstance(stmt, ast.Assign) for t in stmt.targets if isinstance(t, ast.Name)}
    for module, tree in trees.items():  # dataclass fields annotated with an enum: the config keys
        table = _imports(tree, module)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not _is_enum_class(node):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        typed = {k for n in _names_in(stmt.annotation) if (k := _resolve(enums, table, n))}
                        if typed:
                            enums.fields.setdefault(stmt.target.id, set()).update(typed)
    return enums


def _strings(node: ast.AST) -> list[str] | None:
    """The strings of a str constant or of a tuple/list/set of them; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]
    return None


class _Scan(ast.NodeVisitor):
    """Per function: which local names hold an enum-typed config value (assigned from one, or
    annotated with an enum), and every comparison of such a value with a string."""

    def __init__(self, enums: Enums, table: dict[str, tuple[str, str]], where: str):
        self.enums, self.table, self.where = enums, table, where
        self.tainted: list[set[str]] = [set()]
        self.hits: list[str] = []

    def enum_valued(self, node: ast.AST) -> bool:
        """Whether `node` reads an enum-typed config value, or the name of one (`.name`, `.value`)."""
        if isinstance(node, ast.Attribute) and node.attr in ("name", "value"):
            return self.enum_valued(node.value)
        if isinstance(node, ast.Attribute):
            return node.attr in self.enums.fields
        if isinstance(node, ast.Name):
            return node.id in self.tainted[-1]
        if isinstance(node, ast.Subscript):  # cfg["device"]
            return _strings(node.slice) is not None and _strings(node.slice)[0] in self.enums.fields
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("as_enum", "enum_names"):
                return True
            if name == "get" and node.args and _strings(node.args[0]) is not None:  # cfg.get("attention", ...)
                return _strings(node.args[0])[0] in self.enums.fields
            if name == "getattr" and len(node.args) >= 2 and _strings(node.args[1]) == ["name"]:
                return self.enum_valued(node.args[0]) or isinstance(node.args[0], ast.Name)
        return False

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        typed = {a.arg for a in params if any(_resolve(self.enums, self.table, n) for n in _names_in(a.annotation))}
        self.tainted.append(typed)
        self.generic_visit(node)
        self.tainted.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                     else [(target, node.value)])
            for t, v in pairs:
                if isinstance(t, ast.Name):
                    (self.tainted[-1].add if self.enum_valued(v) else self.tainted[-1].discard)(t.id)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for op, (a, b) in zip(node.ops, zip(operands, operands[1:])):
            if not isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)):
                continue
            if (self.enum_valued(a) and _strings(b) is not None) or (self.enum_valued(b) and _strings(a) is not None):
                self.hits.append(f"{self.where}:{node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)


def scan(root: Path) -> tuple[list[str], list[str]]:
    """(uses of an enum member that the enum does not have, string comparisons of enum values)
    in every module under `root`, each as "path:line: code"."""
    enums = collect_enums(root)
    unknown, compared = [], []
    for path in sorted(root.rglob("*.py")):
        module, where = _module_name(path, root), str(path.relative_to(root.parent))
        tree = ast.parse(path.read_text(), str(path))
        table = _imports(tree, module)
        for node in ast.walk(tree):
            # Enum.member, Enum["member"], Enum("value")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and not node.attr.startswith("_"):
                key = _resolve(enums, table, node.value.id)
                if key is not None and node.attr not in enums.members[key]:
                    unknown.append(f"{where}:{node.lineno}: {ast.unparse(node)} ({key[1]} has {', '.join(enums.members[key])})")
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and _strings(node.slice):
                key = _resolve(enums, table, node.value.id)
                if key is not None and _strings(node.slice)[0] not in enums.members[key]:
                    unknown.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1
                  and _strings(node.args[0])):
                key = _resolve(enums, table, node.func.id)
                if key is not None and _strings(node.args[0])[0] not in enums.members[key].values():
                    unknown.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        visitor = _Scan(enums, table, where)
        visitor.visit(tree)
        compared += visitor.hits
    return unknown, compared


def test_the_scan_knows_the_config_enums_and_their_keys():
    enums = collect_enums(SRC)
    assert enums.members["memtrain.config.schema", "Device"] == {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}
    assert ("memtrain.models.gpt.family", "GPTAttention") in enums.members
    for key in ("device", "init_device", "mode", "policy", "lr_schedule", "source", "template_source", "cp_impl",
                "qat", "qat_activations", "fp8_scaling", "param_dtype", "compute_dtype", "attention_backend", "attention"):
        assert key in enums.fields, key


def test_every_enum_member_named_in_the_code_exists():
    unknown, _ = scan(SRC)
    assert not unknown, "no such member:\n" + "\n".join(unknown)


def test_no_enum_config_value_is_compared_with_a_string():
    _, compared = scan(SRC)
    assert not compared, ("compare members (memtrain.config.errors.as_enum(value, Enum) is Enum.member):\n"
                          + "\n".join(compared))


SEEDED = '''
from memtrain.config.errors import as_enum
from memtrain.config.schema import ACMode, Device, QATScheme


def on_cpu(cfg):
    return as_enum(cfg.trainer.device, Device) is Device.cpux


def recomputes(ac, p):
    mode = as_enum(ac.mode, ACMode)
    qat, fp8 = as_enum(p.get("qat", "none"), QATScheme), p.fp8
    if qat == "bitnet":
        return 1
    if cfg.trainer.device.name in ("cpu", "auto"):
        return 2
    return mode != "selectiv" and ACMode["ful"] and QATScheme("int3")


def takes(scheme: QATScheme | str):
    return scheme == "int4"
'''


def test_the_scan_finds_seeded_misspellings_and_string_comparisons(tmp_path):
    root = tmp_path / "memtrain"
    (root / "config").mkdir(parents=True)
    for name in ("schema.py", "errors.py"):
        (root / "config" / name).write_text((SRC / "config" / name).read_text())
    (root / "seeded.py").write_text(SEEDED)
    unknown, compared = scan(root)
    assert [u.split(": ")[1].split(" (")[0] for u in unknown] == ["Device.cpux", "ACMode['ful']", "QATScheme('int3')"]
    assert [c.split(": ")[1] for c in compared] == [
        "qat == 'bitnet'", "cfg.trainer.device.name in ('cpu', 'auto')", "mode != 'selectiv'", "scheme == 'int4'"]
