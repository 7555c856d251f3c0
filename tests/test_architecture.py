"""The package's import architecture, checked by reading its source (pure ``ast``, no imports).

Three rules from ``DESIGN.md`` ("Layers"):

* no import cycles among ``blase_specutils`` modules, counting imports inside functions
  (deferred imports) as well as module-level ones;
* imports only point down the layers ``core`` < ``prep`` < ``astro`` < top level (``cloning``,
  ``fitting``, ``datasets``, ``testing``, ``cli``, ``_validation``, ...);
* no module imports another module's private (underscore) names, neither with
  ``from x import _name`` nor as ``x._name`` on an imported module, and no private module
  (``_x.py``) is imported from outside the package that holds it.

Two modules have a place of their own: ``_version`` (one string, importing nothing) is a
leaf below every layer, and ``astro.accessor``, though it lives in ``astro/``, is an
entry point (``DESIGN.md``: "clone.py, accessor.py, cli/, batch.py the entry points,
above everything they call"): it is sugar over ``fit`` and ``clone``.

Run as a script to print the findings for another checkout::

    python tests/test_architecture.py /path/to/checkout/blase_specutils
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "blase_specutils"
PACKAGE = "blase_specutils"

LAYERS = {"core": 0, "prep": 1, "astro": 2}
TOP_LAYER = 3
LAYER_NAMES = {-1: "leaf", 0: "core", 1: "prep", 2: "astro", 3: "top level"}
#: Modules that import nothing of the package and may be imported from any layer.
LEAVES = frozenset({f"{PACKAGE}._version"})
#: Entry points that live in a lower folder: the accessor registered on specutils.
ENTRY_POINTS = frozenset({f"{PACKAGE}.astro.accessor"})


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen from ``source``."""

    source: str  # importing module (dotted name)
    target: str  # imported module (dotted name)
    names: tuple[str, ...]  # names taken from the target (``from target import names``)
    line: int
    deferred: bool  # inside a function body


def module_names(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Map every module's dotted name to its file (packages by their ``__init__``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(source: str, level: int, module: str | None, modules: dict[str, Path]) -> str:
    """The absolute dotted name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return module or ""
    base = source.split(".")
    if not _is_package(source, modules):
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class _Collector(ast.NodeVisitor):
    """Collect the imports of one module and the names bound to imported modules."""

    def __init__(self, source: str, modules: dict[str, Path]):
        self.source = source
        self.modules = modules
        self.imports: list[Import] = []
        self.module_aliases: dict[str, str] = {}  # local name -> our module it is bound to
        self.private_attributes: list[tuple[str, str, int]] = []  # (module, name, line)
        self._depth = 0

    def _add(self, target: str, names: tuple[str, ...], line: int) -> None:
        self.imports.append(Import(self.source, target, names, line, self._depth > 0))

    def _function(self, node):
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != PACKAGE:
                continue
            self._add(alias.name, (), node.lineno)
            if alias.asname:
                self.module_aliases[alias.asname] = alias.name
            else:
                self.module_aliases.setdefault(PACKAGE, PACKAGE)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _resolve(self.source, node.level, node.module, self.modules)
        if target.split(".")[0] != PACKAGE:
            return
        plain = []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in self.modules:  # ``from package import submodule``
                self._add(sub, (), node.lineno)
                self.module_aliases[alias.asname or alias.name] = sub
            else:
                plain.append(alias.name)
        if plain or target not in self.modules or not _is_package(target, self.modules):
            self._add(target, tuple(plain), node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        # ``import_module(".name", __name__)`` / ``importlib.import_module("blase_specutils.x")``
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
                level = len(name) - len(name.lstrip("."))
                target = _resolve(self.source, level, name.lstrip(".") or None, self.modules)
                if target.split(".")[0] == PACKAGE:
                    self._add(target, (), node.lineno)
            elif isinstance(arg, ast.JoinedStr):  # f".{name}": the lazy table of a package
                for key in _lazy_table(self._tree):
                    self._add(_resolve(self.source, 1, key, self.modules), (), node.lineno)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is not None:
            head, *rest = dotted.split(".")
            if head in self.module_aliases:
                # walk down submodules: blase_specutils.core.train._x
                module = self.module_aliases[head]
                for part in rest:
                    if f"{module}.{part}" in self.modules:
                        module = f"{module}.{part}"
                        continue
                    if _private(part) and module != self.source:
                        self.private_attributes.append((module, part, node.lineno))
                    break
                return
        self.generic_visit(node)

    def collect(self, tree: ast.Module) -> _Collector:
        self._tree = tree
        self.visit(tree)
        return self


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _lazy_table(tree: ast.Module) -> list[str]:
    """Module names in a package's ``_LAZY = {"name": ("module", attr)}`` table."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for value in node.value.values:
                if isinstance(value, ast.Tuple) and value.elts:
                    first = value.elts[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        found.append(first.value)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def collect(
    package_dir: Path = PACKAGE_DIR,
) -> tuple[list[Import], list[tuple[str, str, str, int]]]:
    """All imports of the package, and every ``module._private`` attribute use.

    Returns
    -------
    imports : list of Import
    private_attributes : list of (source, module, name, line)
    """
    modules = module_names(package_dir)
    imports, attributes = [], []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        collector = _Collector(name, modules).collect(tree)
        imports += collector.imports
        attributes += [(name, *found) for found in collector.private_attributes]
    return imports, attributes


def layer(module: str) -> int:
    """The layer of a dotted module name (``blase_specutils`` itself is the top level)."""
    if module in LEAVES:
        return -1
    if module in ENTRY_POINTS:
        return TOP_LAYER
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP_LAYER) if len(parts) > 1 else TOP_LAYER


def _implicit_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module → the modules it imports (a package imported for a plain name counts as itself).

    The import of a package's parents that Python makes on the way down is not an edge: the
    package ``__init__`` files re-export lazily and do not count as importing their children
    unless they name them.
    """
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target == imp.source or imp.target in _implicit_parents(imp.source):
            if not imp.names:
                continue
        graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def upward_imports(imports: list[Import]) -> list[str]:
    """``source:line -> target`` for every import of a higher layer."""
    return sorted(
        f"{imp.source}:{imp.line} ({LAYER_NAMES[layer(imp.source)]}) -> {imp.target} "
        f"({LAYER_NAMES[layer(imp.target)]}){' [deferred]' if imp.deferred else ''}"
        for imp in imports
        if layer(imp.target) > layer(imp.source)
        and imp.target not in _implicit_parents(imp.source)
    )


def private_imports(imports: list[Import], attributes) -> list[str]:
    """``source:line -> target._name`` for every private name taken from another module."""
    found = [
        f"{imp.source}:{imp.line} -> {imp.target}.{name}"
        for imp in imports
        for name in imp.names
        if _private(name) and imp.target != imp.source
    ]
    found += [f"{source}:{line} -> {module}.{name}" for source, module, name, line in attributes]
    for imp in imports:  # a private module, from outside its own package
        package, _, last = imp.target.rpartition(".")
        inside = imp.source == package or imp.source.startswith(package + ".")
        if _private(last) and not inside:
            found.append(f"{imp.source}:{imp.line} -> private module {imp.target}")
    return sorted(found)


# ----------------------------------------------------------------------------- the tests


def test_the_checker_sees_the_package():
    imports, _ = collect()
    graph = import_graph(imports)
    # a module-level and a deferred import it must see
    assert "blase_specutils.core.lineforest" in graph["blase_specutils.cloning"]
    assert "blase_specutils.astro.results" in graph["blase_specutils.cli"]
    assert any(imp.deferred for imp in imports)


def test_the_checker_finds_a_cycle_an_upward_import_and_a_private_name(tmp_path):
    # a constructed package that breaks each rule once
    root = tmp_path / PACKAGE
    (root / "core").mkdir(parents=True)
    (root / "astro").mkdir()
    (root / "__init__.py").write_text("")
    (root / "core" / "__init__.py").write_text("")
    (root / "astro" / "__init__.py").write_text("")
    (root / "core" / "a.py").write_text("from .b import thing\n_hidden = 1\n")
    (root / "core" / "b.py").write_text("def f():\n    from . import a\n    return a._hidden\n")
    (root / "astro" / "c.py").write_text("from ..core.a import _hidden\n")
    (root / "core" / "d.py").write_text("def g():\n    from ..astro import c\n")
    (root / "core" / "_helpers.py").write_text("")
    (root / "core" / "e.py").write_text("from . import _helpers\n")  # its own package: fine
    (root / "astro" / "f.py").write_text("from ..core._helpers import x\n")
    imports, attributes = collect(root)
    assert find_cycles(import_graph(imports)) == [
        ["blase_specutils.core.a", "blase_specutils.core.b"]
    ]
    (upward,) = upward_imports(imports)
    assert "core.d" in upward and "astro.c" in upward and "[deferred]" in upward
    assert private_imports(imports, attributes) == [
        "blase_specutils.astro.c:1 -> blase_specutils.core.a._hidden",
        "blase_specutils.astro.f:1 -> private module blase_specutils.core._helpers",
        "blase_specutils.core.b:3 -> blase_specutils.core.a._hidden",
    ]


def test_leaves_import_nothing_of_the_package():
    imports, _ = collect()
    assert LEAVES <= set(module_names())
    assert not [imp for imp in imports if imp.source in LEAVES]


def test_no_import_cycles():
    imports, _ = collect()
    cycles = find_cycles(import_graph(imports))
    assert not cycles, "import cycles (module-level and deferred imports):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_imports_point_down_the_layers():
    imports, _ = collect()
    upward = upward_imports(imports)
    assert not upward, "imports of a higher layer (core < prep < astro < top level):\n" + (
        "\n".join(upward)
    )


def test_no_private_names_across_modules():
    imports, attributes = collect()
    private = private_imports(imports, attributes)
    assert not private, "private names imported from another module:\n" + "\n".join(private)


if __name__ == "__main__":  # report for another checkout: python tests/test_architecture.py DIR
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR
    found_imports, found_attributes = collect(directory)
    print("cycles:")
    for cycle in find_cycles(import_graph(found_imports)):
        print("  " + " <-> ".join(cycle))
    print("upward imports:")
    for line in upward_imports(found_imports):
        print("  " + line)
    print("private names across modules:")
    for line in private_imports(found_imports, found_attributes):
        print("  " + line)
