"""Work for a second core: a forked child computes a value and sends it back pickled.

A simulation reads its input and then replays it once per agreement; each replay is sequential,
but the two replays are independent, and so are the two parts of a stream file. A forked child
shares everything the parent had at the fork without copying it up front; only its result
crosses a pipe (``Forked``), or a series of results, each as soon as it is made (``Streamed``).
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, timezone
from typing import IO, Any, Generic, TypeVar

from pydantic_core import TzInfo

from coxswain.core.ids import uuid_from_int

T = TypeVar("T")


# --------------------------------------------------------------------------- pickling
#
# Inputs and results hold two UUIDs and a datetime or two each. A UUID pickles through its
# Python-level __getstate__/__setstate__, and a datetime parsed by pydantic carries its own
# ``TzInfo`` instance, pickled anew every time: together most of the cost of unpickling an input.
# Here a UUID travels as its integer and a zero-offset ``TzInfo`` as ``datetime.UTC`` (equal
# instants, the same ISO text): an input unpickles in 7 µs instead of 12 (collector paused).


def _utc() -> timezone:
    return UTC


def _reduce_uuid(value: uuid.UUID) -> tuple[Callable[[int], uuid.UUID], tuple[int]]:
    return uuid_from_int, (value.int,)


def _reduce_tz(value: TzInfo) -> Any:
    offset = value.utcoffset(None)
    return (_utc, ()) if offset is not None and not offset else value.__reduce__()


_TABLE = copyreg.dispatch_table.copy()
_TABLE[uuid.UUID] = _reduce_uuid
_TABLE[TzInfo] = _reduce_tz


def dump(value: object, handle: IO[bytes]) -> None:
    pickler = pickle.Pickler(handle, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _TABLE
    pickler.dump(value)


def dumps(value: object) -> bytes:
    buffer = io.BytesIO()
    dump(value, buffer)
    return buffer.getvalue()


class ChildFailed(RuntimeError):
    """The child exited without a result (killed, out of memory, or it raised)."""


def second_core() -> bool:
    return hasattr(os, "fork") and len(os.sched_getaffinity(0)) >= 2


class Forked(Generic[T]):
    """``work()`` running in a forked child; ``result()`` waits for it, ``cancel()`` stops it."""

    def __init__(self, work: Callable[[], T]) -> None:
        incoming, outgoing = os.pipe()
        self._child = os.fork()
        if self._child == 0:
            code = 1
            try:
                os.close(incoming)
                payload = dumps(work())
                with os.fdopen(outgoing, "wb") as pipe:
                    pipe.write(payload)
                code = 0
            finally:
                # Never return into the parent's code (its finally blocks, atexit, buffered output).
                os._exit(code)
        os.close(outgoing)
        self._incoming: int | None = incoming
        self._reaped = False

    def result(self) -> T:
        """The child's result, once it has exited."""
        incoming, self._incoming = self._incoming, None
        if incoming is None:
            raise ChildFailed("the result was already taken")
        with os.fdopen(incoming, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(self._child, 0)
        self._reaped = True
        if os.waitstatus_to_exitcode(status) != 0 or not payload:
            raise ChildFailed(f"child {self._child} exited with status {os.waitstatus_to_exitcode(status)}")
        found: T = pickle.loads(payload)
        return found

    def cancel(self) -> None:
        if self._incoming is not None:
            os.close(self._incoming)
            self._incoming = None
        if not self._reaped:
            self._reaped = True
            os.kill(self._child, signal.SIGKILL)
            os.waitpid(self._child, 0)


_MORE, _DONE = b"+", b"."


class Streamed(Generic[T]):
    """The items of ``produce()``, made in a forked child and read in order by ``copies`` readers
    (this process and processes forked from it later), each item as soon as it is made.

    Each item is pickled once, into a file of its own in a private temporary folder; a byte on
    each reader's pipe says it is there, so the child never waits for a slow reader. ``close()``
    (in this process, once every reader is done) reaps the child and removes the folder.
    """

    def __init__(self, produce: Callable[[], Iterable[T]], copies: int) -> None:
        self._folder = tempfile.mkdtemp(prefix="coxswain-simulate-")
        pipes = [os.pipe() for _ in range(copies)]
        self._child = os.fork()
        if self._child == 0:
            code = 1
            try:
                for incoming, _ in pipes:
                    os.close(incoming)
                readers = [outgoing for _, outgoing in pipes]
                for number, item in enumerate(produce()):
                    with open(self._item(number), "wb") as handle:
                        dump(item, handle)
                    readers = _tell(readers, _MORE)
                _tell(readers, _DONE)
                code = 0
            finally:
                os._exit(code)  # never return into the parent's code (see Forked)
        for _, outgoing in pipes:
            os.close(outgoing)
        self._incoming: list[int | None] = [incoming for incoming, _ in pipes]
        self._reaped = False

    @property
    def folder(self) -> str:
        """Where the items wait for their readers (removed by ``close``)."""
        return self._folder

    def _item(self, number: int) -> str:
        return os.path.join(self._folder, f"{number}.pickle")

    def items(self, copy: int) -> Iterator[T]:
        """Every item, in order; ``ChildFailed`` after the last one received if the child died."""
        incoming, self._incoming[copy] = self._incoming[copy], None
        if incoming is None:
            raise ChildFailed(f"copy {copy} of the items was already taken or released")
        number = 0
        with os.fdopen(incoming, "rb", buffering=0) as pipe:
            while (mark := pipe.read(1)) == _MORE:
                with open(self._item(number), "rb") as handle:
                    found: T = pickle.load(handle)
                yield found
                number += 1
        if mark != _DONE:
            raise ChildFailed(f"child {self._child} stopped after {number} item(s)")

    def release(self, copy: int) -> None:
        """This process will not read that copy (a process forked since reads it)."""
        incoming, self._incoming[copy] = self._incoming[copy], None
        if incoming is not None:
            os.close(incoming)

    def wait(self) -> None:
        """Reap the child, once a reader has had every item (it exits after the last)."""
        if not self._reaped:
            self._reaped = True
            os.waitpid(self._child, 0)

    def close(self) -> None:
        """Stop the child if it still runs and remove the items (every reader is done with them)."""
        for copy in range(len(self._incoming)):
            self.release(copy)
        if not self._reaped:
            os.kill(self._child, signal.SIGKILL)
            self.wait()
        shutil.rmtree(self._folder, ignore_errors=True)


def _tell(readers: list[int], mark: bytes) -> list[int]:
    """Write ``mark`` to each reader's pipe; the readers still listening."""
    listening = []
    for outgoing in readers:
        try:
            os.write(outgoing, mark)
        except BrokenPipeError:
            os.close(outgoing)  # that reader is gone (cancelled): the others still get every item
        else:
            listening.append(outgoing)
    return listening
