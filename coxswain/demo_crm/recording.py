"""What both local CRMs keep for the tests that drive them: every request they saw (and how they
answered it), and the faults waiting to be served instead of an answer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    path: str = ""  # only requests whose path contains this
    times: int = 1
    code: str = ""  # the vendor's error code, where it has one


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    query: str
    body: Any
    status: int


class Recorder:
    """The requests a local CRM saw and the faults it will serve; its URL once served."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def writes(self, method: str, contains: str) -> list[Seen]:
        """The successful ``method`` requests whose path contains ``contains``."""
        return [s for s in self.seen if s.method == method and contains in s.path and s.status < 300]

    def inject(
        self, status: int, headers: dict[str, str] | None = None, path: str = "", times: int = 1, code: str = ""
    ) -> None:
        """Answer the next ``times`` requests whose path contains ``path`` with ``status``."""
        self.faults.append(Fault(status, headers or {}, path, times, code))

    def _fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.path in path:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _record(self, arrived: float, method: str, path: str, query: str, body: bytes, status: int) -> None:
        parsed = None
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body) if body else None
        self.seen.append(Seen(arrived, method, path, query, parsed, status))
