"""The one error type users see: a problem with what they asked for, said in one line."""
from __future__ import annotations


def first_line(e: BaseException, limit: int = 120) -> str:
    """An exception's first line (its type's name when it has no message), cut at ``limit``: for one-line errors
    that quote a library's reason (torch's state-dict errors run to dozens of lines)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class UnlearnableError(ValueError):
    """Bad input or an unusable file. The CLI prints its message on one line and exits with code 2."""
