"""The package's layering: every import runs down the order below (or stays inside its own
subpackage or module), and no modules import each other in a circle.

An import counts wherever it stands: at module level or deferred inside a function (a deferred
import that runs back up still ties the lower layer to the upper one).
"""

import ast
import graphlib
from pathlib import Path

import pytest

import raise_select

PACKAGE = Path(raise_select.__file__).parent

# Lowest first. A unit is a subpackage or a top-level module ("" is the package's __init__, which
# holds only __version__). A unit may import units of lower rows only; units of one row are
# siblings and do not import each other. docs/architecture.md says why each sits where it does.
LAYERS: list[tuple[str, ...]] = [
    ("",),
    ("errors",),
    ("io",),
    ("logs", "progress", "markdown", "registry", "costs"),
    ("data",),
    ("models", "config"),  # config reads YAML through data.pools.decode_utf8
    ("features",),
    ("policy",),
    ("training",),
    ("evaluation", "baselines"),  # evaluation.loss uses training.reward; baselines train with training.loop
    ("reports",),
    ("experiments",),
    ("demo",),
    ("cli",),
]

# Known imports that run back up, each (file, the unit it imports) with the move that removes it.
# The test fails when one of them is gone, so that it is removed from this list too.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _imports(root: Path, path: Path, typing_only: bool = True) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `path` (under package folder `root`), relative ones resolved;
    `from a import b` gives both `a` and `a.b` (b may be a module). `typing_only=False` leaves out the
    imports under `if TYPE_CHECKING:`, which never run."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    package = parts[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    if not typing_only:
        for node in ast.walk(tree):
            test = node.test if isinstance(node, ast.If) else None
            if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out += [(node.lineno, module), *((node.lineno, f"{module}.{a.name}") for a in node.names)]
    return out


def _unit(root: Path, path: Path) -> str:
    """The unit of file `path`: its subpackage's folder or its top-level module ("" for the package's __init__)."""
    first = path.relative_to(root).parts[0]
    return "" if first == "__init__.py" else first.removesuffix(".py")


def _units(root: Path) -> set[str]:
    return {_unit(root, p) for p in root.rglob("*.py")}


def _target(root: Path, module: str, units: set[str]) -> str | None:
    """The unit an absolute module name lies in; None outside the package; "" for names of its __init__."""
    parts = module.split(".")
    if parts[0] != root.name:
        return None
    return parts[1] if len(parts) > 1 and parts[1] in units else ""


def _layer_violations(
    root: Path, layers: list[tuple[str, ...]], known: set[tuple[str, str]]
) -> tuple[list[str], set[tuple[str, str]]]:
    """(`file:line -> unit (why)` of every import that runs up or sideways and is not in `known`,
    the members of `known` actually found)."""
    rank = {u: i for i, row in enumerate(layers) for u in row}
    units = _units(root) | set(rank)
    bad, found = [], set()
    for path in sorted(root.rglob("*.py")):
        rel, src = path.relative_to(root).as_posix(), _unit(root, path)
        hits = {}
        for line, module in _imports(root, path):
            dst = _target(root, module, units)
            if dst is None or dst == src or src not in rank or dst not in rank or rank[dst] < rank[src]:
                continue
            if (rel, dst) in known:
                found.add((rel, dst))
                continue
            why = "up" if rank[dst] > rank[src] else "sibling"
            hits.setdefault((line, dst), f"{rel}:{line} -> {dst} ({why})")
        bad += [hits[k] for k in sorted(hits)]
    return bad, found


def _unplaced(root: Path, layers: list[tuple[str, ...]]) -> list[str]:
    placed = {u for row in layers for u in row}
    return sorted(_units(root) - placed)


def _module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it runs (deferred ones too, not those under
    `if TYPE_CHECKING:`). Importing `a.b.c` also runs the `__init__` of `a` and `a.b`, so those count,
    except packages that hold the importer itself."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for _, module in _imports(root, path, typing_only=False):
            while module and module not in modules:
                module = module.rpartition(".")[0]
            parts = module.split(".") if module else []
            for target in {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own:
                graph[name].add(target)
    return graph


def _cycle(root: Path) -> list[str]:
    """One circle of imports between the package's modules, [] when there is none."""
    try:
        graphlib.TopologicalSorter(_module_graph(root)).prepare()
    except graphlib.CycleError as e:
        return e.args[1]
    return []


def test_every_unit_is_placed_in_the_layers():
    assert _unplaced(PACKAGE, LAYERS) == [], "place each new subpackage or top-level module in LAYERS"


def test_imports_run_down_the_layers():
    bad, found = _layer_violations(PACKAGE, LAYERS, KNOWN_UPWARD)
    assert bad == []
    assert found == KNOWN_UPWARD, f"no longer imported, remove from KNOWN_UPWARD: {sorted(KNOWN_UPWARD - found)}"


def test_no_modules_import_each_other_in_a_circle():
    assert _cycle(PACKAGE) == []


def test_the_check_fails_on_imports_that_run_back_up(tmp_path):
    root = tmp_path / "raise_select"
    files = {
        "__init__.py": "__version__ = '0'\n",
        "cli/common.py": "from ..logs import setup_logging\nfrom raise_select import __version__\n",  # top: anything
        "training/a.py": "import os\nfrom ..cli.common import setup_logging\n",
        "training/b.py": "def f():\n    import raise_select.cli.main\n",  # deferred still counts
        "training/c.py": "from ..config import resolve\nfrom .. import cli\n",
        "training/d.py": "from .client import x\nimport raise_select.climate\nfrom .a import y\n",  # neither runs up
        "demo.py": "from .cli import common\n",
        "policy/prior.py": "def f():\n    from ..baselines.rds import rds_vectors  # lazy\n",  # the circle of issue 31
        "policy/state.py": "from ..features.similarity import cosine_matrix\n",  # down: fine
        "baselines/loss.py": "from ..evaluation import loss\n",  # siblings
        "reports/study.py": "from ..experiments import cells\n",  # a known exception
        "experiments/cells.py": "import torch\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    known = {("reports/study.py", "experiments"), ("demo.py", "training")}
    bad, found = _layer_violations(root, LAYERS, known)
    assert bad == [
        "baselines/loss.py:1 -> evaluation (sibling)",
        "demo.py:1 -> cli (up)",
        "policy/prior.py:2 -> baselines (up)",
        "training/a.py:2 -> cli (up)",
        "training/b.py:2 -> cli (up)",
        "training/c.py:2 -> cli (up)",
    ]
    assert found == {("reports/study.py", "experiments")}  # demo.py -> training: stale, the test reports it
    assert _unplaced(root, LAYERS) == []
    (root / "plugins").mkdir()
    (root / "plugins" / "x.py").write_text("")
    assert _unplaced(root, LAYERS) == ["plugins"]


def test_the_cycle_check_sees_a_deferred_circle_and_package_inits(tmp_path):
    root = tmp_path / "raise_select"
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("from .pools import load_pool\n")  # a package's own init: no circle
    (root / "data" / "pools.py").write_text("def subsample():\n    from .benchmarks import sample_indices\n")
    (root / "data" / "benchmarks.py").write_text("from .pools import Example\n")
    assert set(_cycle(root)) == {"raise_select.data.pools", "raise_select.data.benchmarks"}
    (root / "data" / "pools.py").write_text("import random\n")
    assert _cycle(root) == []
    (root / "io.py").write_text("from .data.pools import decode_utf8\n")  # runs data/__init__.py too
    (root / "data" / "pools.py").write_text("from raise_select.io import atomic_path\n")
    assert set(_cycle(root)) >= {"raise_select.io", "raise_select.data.pools"}
    (root / "io.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from .data.pools import Pool\n")
    assert _cycle(root) == []  # an import for type annotations only never runs


@pytest.mark.parametrize(
    "old, name",
    [("raise_select.baselines.aggregate", "cosine_matrix"), ("raise_select.baselines.rds", "rds_vectors")],
)
def test_moved_similarity_code_is_still_importable_from_baselines(old, name):
    import importlib

    from raise_select.features import similarity

    assert getattr(importlib.import_module(old), name) is getattr(similarity, name)
