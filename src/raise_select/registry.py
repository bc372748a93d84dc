"""One registry for everything chosen by name: selection methods, testbeds, model presets, priors.

A `Registry` is a read-only mapping name -> entry in registration order. Asking it for a name it
does not hold raises `UnknownName` (a `UserError`, so the command line prints one line and exits
2; also a `KeyError`, so `in` and `.get` behave as on a dict) with lm-evaluation-harness's kind
of message: "unknown method 'rsd'; did you mean 'rds'? available: ..." (the closest names by
`difflib`). It lives at the package's base so every layer can use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from .errors import UserError

T = TypeVar("T")


class UnknownName(UserError, KeyError):
    """A name no registry entry has; the message lists the closest names and all of them."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: object, available: Iterable[str], where: str = "") -> UnknownName:
    """The one-line error for `name`, which is none of `available` (a `kind` such as "method")."""
    names = [str(n) for n in available]
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    prefix = f"{where}: " if where else ""
    return UnknownName(f"{prefix}unknown {kind} {str(name)!r}{hint} available: {', '.join(names)}")


class Registry(Mapping[str, T]):
    """Name -> entry of one `kind` ("method", "testbed", ...); a name registered twice is refused."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"two {self.kind}s are named {name!r}")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str, where: str = "") -> T:
        """The entry of `name`; `where` (a file, a field) prefixes the error of an unknown one."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, name, self._entries, where) from None

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def check(self, names: Iterable[str], where: str = "") -> None:
        """Refuse the first of `names` that is not registered."""
        for n in names:
            self.lookup(n, where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
