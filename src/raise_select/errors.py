"""Errors a user can act on.

Anything the user can fix (a bad file, a missing field, an invalid setting) raises
`UserError`; the CLI prints its message on one line and exits with status 2, never a
traceback.
"""


class UserError(Exception):
    """An error caused by user input: the message names the file, row and field."""


def where(file: str | None = None, row: int | None = None, field: str | None = None) -> str:
    """Format the location of a bad input as `file, row N, field 'x'`."""
    parts = []
    if file is not None:
        parts.append(str(file))
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)
