"""The layers import one way only: lipcore <- catalogs <- flows <- deploy <- lipzoo.

Why: a lower layer importing a higher one (even lazily inside a function) makes the stack a cycle: flows
could not be used without deploy and the CLI, and a change up top could break the engine. The check reads
the source (ast), so an import inside a function or behind a condition counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["lipcore", "catalogs", "flows", "deploy", "lipzoo"]  # each may import only those before it


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module the file imports, absolute names, relative imports resolved against the file's package
    (`from . import x` counts as the package and as `package.x`, since x may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)  # importlib.import_module("pkg.mod") with a literal name
    return out


def layer_violations(layer: str, root: Path = ROOT) -> list[str]:
    """`file: imports X` for each import of a layer above `layer`."""
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    bad = []
    for path in sorted((root / layer).rglob("*.py")):
        for mod in sorted(imported_modules(path, root)):
            if mod.split(".")[0] in above:
                bad.append(f"{path.relative_to(root).as_posix()}: imports {mod}")
    return bad


def test_every_layer_is_a_package_with_sources():
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), layer
        assert any((ROOT / layer).rglob("*.py")), layer


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_layer_imports_one_above_it(layer):
    assert layer_violations(layer) == []


def test_the_checker_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """The checker itself can fail: a file with a lazy absolute, a relative-into-a-sibling and an
    import_module import of higher layers is reported for each of them."""
    pkg = tmp_path / "flows" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "flows" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(
        "import os\n"
        "def f():\n"
        "    from deploy.serve import serve_zoo\n"
        "    import importlib\n"
        "    importlib.import_module('lipzoo.cli')\n"
        "from .. import zoo\n"
        "from ..hubs import hf\n"
    )
    mods = imported_modules(pkg / "m.py", tmp_path)
    assert {"deploy.serve", "lipzoo.cli", "flows", "flows.zoo", "flows.hubs", "flows.hubs.hf"} <= mods
    assert layer_violations("flows", tmp_path) == ["flows/sub/m.py: imports deploy.serve",
                                                   "flows/sub/m.py: imports deploy.serve.serve_zoo",
                                                   "flows/sub/m.py: imports lipzoo.cli"]
    assert layer_violations("lipcore", tmp_path) == []  # no lipcore/ here, nothing to report


def test_lipzoo_is_the_console_script():
    """The `lipzoo` script and `python -m lipzoo` enter the top layer, not flows."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert conf["project"]["scripts"]["lipzoo"] == "lipzoo.cli:main"
    assert set(LAYERS) <= {p.rstrip("*") for p in conf["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert (ROOT / "lipzoo" / "__main__.py").is_file()
