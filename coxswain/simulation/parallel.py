"""Work for a second core: a forked child computes a value and sends it back pickled.

A simulation reads its input and then replays it once per agreement; each replay is sequential,
but the two replays are independent, and so are the two parts of a stream file. A forked child
shares everything the parent had at the fork without copying it up front; only its result
crosses a pipe.
"""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ChildFailed(RuntimeError):
    """The child exited without a result (killed, out of memory, or it raised)."""


def second_core() -> bool:
    return hasattr(os, "fork") and len(os.sched_getaffinity(0)) >= 2


def _read_all(incoming: int) -> bytes:
    with os.fdopen(incoming, "rb") as pipe:
        return pipe.read()


class Forked(Generic[T]):
    """``work()`` running in a forked child; ``result()`` waits for it, ``cancel()`` stops it.

    With ``copies`` above one the child writes its pickled result to that many pipes, so another
    process forked from this one later can take a copy with ``receive(n)``.
    """

    def __init__(self, work: Callable[[], T], copies: int = 1) -> None:
        pipes = [os.pipe() for _ in range(copies)]
        self._child = os.fork()
        if self._child == 0:
            code = 1
            try:
                for incoming, _ in pipes:
                    os.close(incoming)
                payload = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
                for _, outgoing in pipes:
                    with os.fdopen(outgoing, "wb") as pipe:
                        pipe.write(payload)
                code = 0
            finally:
                # Never return into the parent's code (its finally blocks, atexit, buffered output).
                os._exit(code)
        for _, outgoing in pipes:
            os.close(outgoing)
        self._incoming: list[int | None] = [incoming for incoming, _ in pipes]
        self._reaped = False

    def _take(self, copy: int) -> int:
        incoming, self._incoming[copy] = self._incoming[copy], None
        if incoming is None:
            raise ChildFailed(f"copy {copy} of the result was already taken or released")
        return incoming

    def result(self) -> T:
        """The first copy, once the child has exited."""
        payload = _read_all(self._take(0))
        _, status = os.waitpid(self._child, 0)
        self._reaped = True
        if os.waitstatus_to_exitcode(status) != 0 or not payload:
            raise ChildFailed(f"child {self._child} exited with status {os.waitstatus_to_exitcode(status)}")
        found: T = pickle.loads(payload)
        return found

    def receive(self, copy: int) -> T:
        """Another copy, in a process forked after this child (which cannot wait for it)."""
        payload = _read_all(self._take(copy))
        if not payload:
            raise ChildFailed(f"child {self._child} sent no result")
        found: T = pickle.loads(payload)
        return found

    def release(self, copy: int) -> None:
        """This process will not read that copy (a process forked since reads it)."""
        os.close(self._take(copy))

    def cancel(self) -> None:
        for copy, incoming in enumerate(self._incoming):
            if incoming is not None:
                self.release(copy)
        if not self._reaped:
            self._reaped = True
            os.kill(self._child, signal.SIGKILL)
            os.waitpid(self._child, 0)
