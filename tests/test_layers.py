"""The package's layering: nothing below the command line imports from it."""

import ast
from pathlib import Path

import raise_select

PACKAGE = Path(raise_select.__file__).parent


def _imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `path` (under package folder `root`), relative ones resolved;
    `from a import b` gives both `a` and `a.b` (b may be a module)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out += [(node.lineno, module), *((node.lineno, f"{module}.{a.name}") for a in node.names)]
    return out


def _cli_imports_below_cli(root: Path) -> list[str]:
    """`file:line` of every import of `<root>.cli` from a module outside `<root>/cli/`."""
    cli = f"{root.name}.cli"
    bad = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "cli":
            continue
        lines = sorted({line for line, m in _imports(root, path) if m == cli or m.startswith(cli + ".")})
        bad += [f"{path.relative_to(root).as_posix()}:{line}" for line in lines]
    return bad


def test_nothing_below_the_cli_imports_from_it():
    assert _cli_imports_below_cli(PACKAGE) == []


def test_the_check_sees_relative_absolute_and_local_imports(tmp_path):
    root = tmp_path / "raise_select"
    (root / "cli").mkdir(parents=True)
    (root / "training").mkdir()
    (root / "cli" / "common.py").write_text("from ..logs import setup_logging\n")  # the CLI may import anything
    (root / "training" / "a.py").write_text("import os\nfrom ..cli.common import setup_logging\n")
    (root / "training" / "b.py").write_text("def f():\n    import raise_select.cli.main\n")
    (root / "training" / "c.py").write_text("from ..config import resolve\nfrom .. import cli\n")
    (root / "training" / "d.py").write_text("from .client import x\nimport raise_select.climate\n")  # not the CLI
    (root / "demo.py").write_text("from .cli import common\n")
    assert _cli_imports_below_cli(root) == ["demo.py:1", "training/a.py:2", "training/b.py:2", "training/c.py:2"]


def test_evaluation_does_not_reach_into_reports():
    for path in (PACKAGE / "evaluation").rglob("*.py"):
        for line, module in _imports(PACKAGE, path):
            assert not module.startswith("raise_select.reports"), f"{path.name}:{line} imports {module}"
