"""Rich progress bars for long work, silent when stderr is not a terminal (CI, pipes, tests)."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

_ENABLED: bool | None = None


def enabled() -> bool:
    if _ENABLED is not None:
        return _ENABLED
    return sys.stderr.isatty() and not os.environ.get("UNLEARNABLE_NO_PROGRESS")


def set_enabled(value: bool | None) -> None:
    """Force progress bars on or off (``None``: on when stderr is a terminal)."""
    global _ENABLED
    _ENABLED = value


@contextlib.contextmanager
def task(description: str, total: float | None) -> Iterator[Callable[..., None]]:
    """``with task("training", total=n) as advance: advance(1, status="...")``; ``advance(0, total=m)`` resizes
    the bar when the work turns out shorter (or longer) than announced."""
    if not enabled():
        yield lambda *a, **k: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[status]}"), transient=True,
                  console=_console()) as bar:
        tid = bar.add_task(description, total=total, status="")

        def advance(n: float = 1, status: str | None = None, total: float | None = None) -> None:
            extra = {"status": status} if status is not None else {}
            if total is not None:
                extra["total"] = total
            bar.update(tid, advance=n, **extra)

        yield advance


def _console():
    from rich.console import Console

    return Console(stderr=True)
