"""The package's shape (STYLE §1-§3): modules short enough to read in one sitting, and no module reaching
into another's private names."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "rnnkit"
MAX_LINES = 400  # the style guide's "past ~400 lines, split"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`module:line name` for each private name that `path` imports from rnnkit (absolute or relative imports)."""
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module != "rnnkit" and not module.startswith("rnnkit."):
                continue  # a third-party import such as `from torch import _dynamo` is not ours to judge
            names = [*module.split("."), *(a.name for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [part for a in node.names if a.name == "rnnkit" or a.name.startswith("rnnkit.")
                     for part in a.name.split(".")]
        else:
            continue
        found += [f"{rel}:{node.lineno} {name}" for name in names if _is_private(name)]
    return found


def test_the_package_has_modules_to_check():
    assert len(_modules()) > 20 and (PACKAGE / "__init__.py") in _modules()


def test_every_module_is_shorter_than_400_lines():
    too_long = []
    for path in _modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n >= MAX_LINES:
            too_long.append(f"{path.relative_to(ROOT).as_posix()}: {n} lines")
    assert not too_long, (f"modules of {MAX_LINES} lines or more; split each along a seam into cohesive "
                          "modules (STYLE §1):\n" + "\n".join(too_long))


def test_no_module_imports_a_private_name_from_another_rnnkit_module():
    offenders = [hit for path in _modules() for hit in _private_imports(path)]
    assert not offenders, ("private names imported from rnnkit modules; make the helper public and documented "
                           "where it is defined, or move it where it is used (STYLE §2-§3):\n" + "\n".join(offenders))


def test_the_private_import_check_sees_absolute_and_relative_forms(tmp_path):
    pkg = tmp_path / "src" / "rnnkit"
    pkg.mkdir(parents=True)
    mod = pkg / "mod.py"
    mod.write_text("from __future__ import annotations\n"
                   "from torch import _dynamo\n"
                   "from rnnkit import __version__\n"
                   "from rnnkit.utils import _plain, tensor\n"
                   "from .core import _helper\n"
                   "from . import _private\n"
                   "import rnnkit._impl\n", encoding="utf-8")
    assert _private_imports(mod, root=tmp_path) == [
        "src/rnnkit/mod.py:4 _plain", "src/rnnkit/mod.py:5 _helper", "src/rnnkit/mod.py:6 _private",
        "src/rnnkit/mod.py:7 _impl"]
