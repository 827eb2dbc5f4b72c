"""Progress of long operations (demo traffic, generate, simulate, benchmarks) for a person watching.

Drawn on stderr and only when stderr is a terminal: stdout stays the machine-readable result
(a JSON line, a report), and logs or pipes never fill with redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Meter:
    """``meter(n)`` counts n more done; ``meter.expect(total)`` sets or corrects the total once it
    is known. Without a terminal both do nothing, so callers never ask whether anyone watches."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar, self._task = bar, task

    def __call__(self, n: float = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def expect(self, total: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total)

    def finish(self) -> None:
        """Done: the total is what was counted (an estimated total was a little off)."""
        if self._bar is not None and self._task is not None:
            done = self._bar.tasks[self._task].completed
            self._bar.update(self._task, total=done, completed=done)


class Rate(ProgressColumn):
    """Items per second over rich's recent window, in the operation's own unit."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "…" if speed is None else f"{speed:,.0f}"
        return Text(f"{shown} {self.unit}/s", style="progress.data.speed")


class Count(ProgressColumn):
    """How many so far, and of how many when the total is known."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        total = "" if task.total is None else f"/{task.total:,.0f}"
        return Text(f"{task.completed:,.0f}{total} {self.unit}", style="progress.download")


def shown(stream: TextIO | None = None) -> bool:
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(
    description: str,
    total: float | None = None,
    *,
    unit: str | None = None,
    stream: TextIO | None = None,
    force: bool = False,
) -> Iterator[Meter]:
    """A bar for the duration of the block: with a ``unit``, a count with its rate (and time left
    once there is a total); without one, the bar with ``done/total`` (a spinner when no total).

    Yields a ``Meter``; it does nothing when the stream is not a terminal, unless ``force``.
    """
    target = stream if stream is not None else sys.stderr
    if not (force or shown(target)):
        yield Meter()
        return
    columns: tuple[ProgressColumn, ...]
    if unit is not None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            Count(unit),
            Rate(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    elif total is None:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    console = Console(file=target, force_terminal=True if force else None, stderr=target is sys.stderr)
    # Whatever the block writes to stdout is the command's result: never captured into the bar.
    with Progress(*columns, console=console, redirect_stdout=False, transient=False) as bar:
        yield Meter(bar, bar.add_task(description, total=total))
