"""Progress of long operations (demo traffic, generate, simulate, benchmarks) for a person watching.

Drawn on stderr and only when stderr is a terminal: stdout stays the machine-readable result
(a JSON line, a report), and logs or pipes never fill with redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[float], None]


def _ignore(_: float = 1) -> None:
    return None


def shown(stream: TextIO | None = None) -> bool:
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(
    description: str, total: float | None = None, *, stream: TextIO | None = None, force: bool = False
) -> Iterator[Advance]:
    """A bar (or, without a total, a spinner with a count) for the duration of the block.

    Yields ``advance(n)``; a no-op when the stream is not a terminal, unless ``force``.
    """
    target = stream if stream is not None else sys.stderr
    if not (force or shown(target)):
        yield _ignore
        return
    columns = (
        (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        if total is None
        else (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    )
    console = Console(file=target, force_terminal=True if force else None, stderr=target is sys.stderr)
    # Whatever the block writes to stdout is the command's result: never captured into the bar.
    with Progress(*columns, console=console, redirect_stdout=False, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: float = 1) -> None:
            bar.advance(task, n)

        yield advance
