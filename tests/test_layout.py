"""The package layout, read from the source: imports point down the layers and never go round in a circle.

Layers, lowest first: `modeling_blsp_emo` (remote code) ← `processing` ← `trainers.training | evaluation |
checkpoints | hub` ← `trainers.inference | demo` ← `trainers.cli` ← `trainers` (its lazy public names).
Every import counts, including those inside functions and module names written as strings.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("modeling_blsp_emo", "processing", "trainers")
LAYERS = {
    "modeling_blsp_emo": 0,
    "processing": 1,
    "trainers.training": 2, "trainers.evaluation": 2, "trainers.checkpoints": 2, "trainers.hub": 2,
    "trainers.inference": 3, "trainers.demo": 3,
    "trainers.cli": 4,
    "trainers": 5,
}
MODULE_STRING = re.compile(r"^(?:modeling_blsp_emo|processing|trainers)(?:\.\w+)*$")
REMOTE_CODE_IMPORTS = {"torch", "transformers", "numpy"} | set(sys.stdlib_module_names)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> list[str]:
    """The project modules a `from ... import ...` loads (a name may be a submodule)."""
    if node.level:
        base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        package = ".".join(base + ([node.module] if node.module else []))
    else:
        package = node.module
    submodules = [f"{package}.{alias.name}" for alias in node.names if f"{package}.{alias.name}" in MODULES]
    return submodules or [package]


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(project modules that `module` imports anywhere in its body, other top-level packages it imports)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(resolve(module, node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            names.add(node.value)  # e.g. a module loaded lazily by name
    project = {name for name in names if name.split(".")[0] in PACKAGES}
    return project, {name.split(".")[0] for name in names - project}


def known_module(name: str) -> str:
    """`name`, or the nearest enclosing module that exists (an attribute path like `pkg.mod.Class`)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def layer_of(module: str) -> tuple[str, int]:
    room = max((room for room in LAYERS if module == room or module.startswith(room + ".")), key=len)
    return room, LAYERS[room]


def graph() -> dict[str, set[str]]:
    """Module → modules it makes Python execute: its imports and their enclosing packages' `__init__`
    (except its own ancestors, which are already executing)."""
    edges = {}
    for module in MODULES:
        targets = set()
        for name in imports_of(module)[0]:
            target = known_module(name)
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                parent = ".".join(parts[:depth])
                if parent in MODULES and not (module == parent or module.startswith(parent + ".")):
                    targets.add(parent)
        edges[module] = targets - {module}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer():
    assert len(MODULES) > 50
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    room, layer = layer_of(module)
    upward = [
        name for name in imports_of(module)[0]
        if layer_of(known_module(name))[1] > layer
    ]
    assert not upward, f"{module} ({room}) imports from a higher layer: {sorted(upward)}"


def test_no_import_circles_between_modules():
    assert cycles(graph()) == []


def test_no_import_circles_between_rooms():
    rooms: dict[str, set[str]] = {}
    for module, targets in graph().items():
        rooms.setdefault(layer_of(module)[0], set()).update(layer_of(target)[0] for target in targets)
    for room, targets in rooms.items():
        targets.discard(room)
    assert cycles(rooms) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("modeling_blsp_emo")))
def test_remote_code_imports_only_torch_transformers_numpy_and_itself_relatively(module):
    tree = ast.parse(MODULES[module].read_text())
    absolute_own = [
        node.module for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level and node.module.split(".")[0] in PACKAGES
    ]
    assert not absolute_own, f"{module} imports the package absolutely: {absolute_own} (checkpoints load without it)"
    # An import inside `try` is optional (it names its install command when missing); transformers'
    # remote-code import check skips those too.
    optional = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Try)
        for statement in node.body for inner in ast.walk(statement) if isinstance(inner, ast.Import) for alias in inner.names
    }
    required = imports_of(module)[1] - optional
    assert required <= REMOTE_CODE_IMPORTS, required - REMOTE_CODE_IMPORTS


def test_the_checker_sees_function_local_and_string_imports(tmp_path, monkeypatch):
    source = 'def run():\n    from trainers.demo import Demo\n\nTABLE = {"x": "trainers.cli.main"}\n'
    fake = ROOT / "processing" / "_layout_probe.py"
    monkeypatch.setitem(MODULES, "processing._layout_probe", fake)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else Path.read_bytes(self).decode())
    found = imports_of("processing._layout_probe")[0]
    assert {"trainers.demo", "trainers.cli.main"} <= found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_public_names_load_lazily_from_trainers():
    import subprocess

    code = (
        "import sys, trainers, trainers.inference\n"
        "heavy = [m for m in ('gradio', 'trainers.cli', 'trainers.demo', 'trainers.hub') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "for name in trainers.__all__: getattr(trainers, name)\n"
        "print(len(trainers.__all__))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 20
