"""Which code made a cell: the git commit of the installed package's source folder and whether
its tree had changes (`code_version`), and the versions of the packages a run depends on
(`logs.package_versions`). A cell records both when it is computed (`provenance`), and each
evaluation records the code version that made it; the report says whether every cell of a
table comes from one code version (`code_versions`, `provenance_markdown`).

Outside a git checkout (an installed wheel), or where git is missing, the commit is None and
`source` says why; the package's own version is recorded either way.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path

from ..logs import package_versions

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/raise_select


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def code_version(folder: str | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None, "source": how it was found} of the git
    checkout holding `folder` (default: the installed package's source folder); computed once per
    process, at its first call (a study calls it when it starts, as its code is loaded: commits made
    while it runs are not its code). `dirty`: the package's own source files differ from the commit
    (other files of the checkout do not count)."""
    where = Path(folder) if folder else PACKAGE_DIR
    top = _git(["rev-parse", "--show-toplevel"], where)
    if not top:
        return {"commit": None, "dirty": None, "source": "not a git checkout"}
    commit = _git(["rev-parse", "HEAD"], where)
    if not commit:
        return {"commit": None, "dirty": None, "source": "git checkout without a commit"}
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", str(where)], where)
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "source": "git"}


def provenance() -> dict:
    """What a cell records about the code that computed it."""
    return {"code": code_version(), "versions": package_versions()}


def version_label(code: dict | None) -> str:
    """`abc123def456`, `abc123def456+changes`, or why there is no commit."""
    if not code:
        return "not recorded"
    if not code.get("commit"):
        return str(code.get("source") or "no commit")
    return code["commit"][:12] + ("+changes" if code.get("dirty") else "")


def code_versions(records: Iterable[dict]) -> dict[str, list[str]]:
    """{code version label: names of the cells (training) and evaluations made by it}."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(version_label(r.get("code")), []).append(r.get("name", "?"))
        for what, e in (r.get("evals") or {}).items():
            if isinstance(e, dict) and "code" in e:
                out.setdefault(version_label(e["code"]), []).append(f"{r.get('name', '?')} ({what})")
    return out


def provenance_markdown(records: list[dict]) -> str:
    """One line when every cell and evaluation comes from one code version, else the list."""
    versions = code_versions(records)
    packages: dict[str, set[str]] = {}
    for r in records:
        for pkg, v in (r.get("versions") or {}).items():
            packages.setdefault(pkg, set()).add(v)
    mixed = {p: sorted(v) for p, v in packages.items() if len(v) > 1}
    if len(versions) == 1:
        (label,) = versions
        text = f"Provenance: every cell and evaluation comes from one code version ({label})"
    else:
        lines = [f"- {label}: {', '.join(names)}" for label, names in versions.items()]
        text = f"Provenance: the cells come from {len(versions)} code versions:\n" + "\n".join(lines) + "\n"
    pk = (
        "; package versions differ across cells: " + "; ".join(f"{p} {', '.join(v)}" for p, v in mixed.items())
        if mixed
        else "; one set of package versions"
        if packages
        else "; no package versions recorded"
    )
    return text.rstrip("\n") + (pk + "." if len(versions) == 1 else "\n" + pk.lstrip("; ").capitalize() + ".")
