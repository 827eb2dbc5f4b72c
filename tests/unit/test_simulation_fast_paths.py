"""The simulator's shortcuts decide exactly as the plain replay.

The engine arms each re-evaluation at a cheap bound (``reevaluation_bound``) and searches for the
exact moment only when a lead reaches it without a new input; the plain replay arms at the exact
moment (``next_reevaluation``) every time. Both must make the same decisions at the same instants,
in the same order, with agreements whose scores decay within hours (timers fire all the time).
"""

from __future__ import annotations

import heapq
import os
import pickle
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import TzInfo

from coxswain.core import routing_state
from coxswain.core.agreement import Agreement, load_agreement_text
from coxswain.core.lead import LeadState, next_reevaluation
from coxswain.core.routing import RoutingDecision, RoutingInput, Situation, route
from coxswain.simulation import engine as engine_module
from coxswain.simulation import run as run_module
from coxswain.simulation.engine import Engine, Input, Results
from coxswain.simulation.generate import StreamSpec, write_stream
from coxswain.simulation.inputs import BadInput, Part, read_chunks, read_stream, split_stream
from coxswain.simulation.parallel import ChildFailed, Streamed, dumps
from coxswain.simulation.run import simulate_stream
from schemas.events import Stage

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "agreement.yaml").read_text()


def fast_decay(text: str) -> Agreement:
    return load_agreement_text(
        text.replace("half_life: 14d", "half_life: 8h")
        .replace("half_life: 7d", "half_life: 3h")
        .replace("half_life: 10d", "half_life: 5h")
        .replace("half_life: 3d", "half_life: 40m")
        .replace("hold: 7d", "hold: 2h")
    )


AGREEMENTS = {
    "fast-decay": fast_decay(EXAMPLE),
    # Narrow hysteresis, capacity and daily caps: demotions and re-qualifications re-route, and
    # whoever routes first changes who is free next, so the order of timers shows.
    "fast-decay-capacity": fast_decay(
        EXAMPLE.replace("mql: { enter: 60, exit: 45 }", "mql: { enter: 50, exit: 48 }")
        .replace("timezone: America/New_York }", "timezone: America/New_York, capacity: 6, daily_cap: 9 }")
        .replace("sql: { enter: 100, exit: 85 }", "sql: { enter: 90, exit: 88 }")
    ),
}


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[Input]:
    path = tmp_path_factory.mktemp("stream") / "stream.jsonl"
    write_stream(StreamSpec(leads=400, start=date(2026, 3, 2), days=12, seed=11), path)
    return read_stream(path)


def decisions(results: Results) -> tuple[object, ...]:
    return (
        results.stage_changes,
        [
            (a.lead_id, a.at, a.rep_id, a.pool_id, a.rule_id, a.matched_by, a.due, a.sla, a.responded_at)
            for a in results.assignments
        ],
        results.rejected,
        results.parked,
        results.leads,
    )


class Plain(Engine):
    """The replay as the live scorer arms its timers: at the exact moment, on every change."""

    def _arm(self, state: LeadState, at: datetime) -> None:
        due = next_reevaluation(state, self.agreement, at)
        if due is None:
            self.timers.pop(state.lead_id, None)
            return
        self._seq += 1
        self.timers[state.lead_id] = (due, self._seq)
        heapq.heappush(self._heap, (due, self._seq, state.lead_id))


@pytest.mark.parametrize("name", sorted(AGREEMENTS))
def test_arming_at_bounds_decides_as_arming_at_the_exact_moment(
    name: str, events: list[Input], monkeypatch: pytest.MonkeyPatch
) -> None:
    agreement = AGREEMENTS[name]
    plain = Plain(agreement).run(events)
    calls = {"reevaluation_bound": 0, "next_reevaluation": 0}

    def counted(name: str) -> Callable[..., datetime | None]:
        function: Callable[..., datetime | None] = getattr(engine_module, name)

        def call(*args: Any) -> datetime | None:
            calls[name] += 1
            return function(*args)

        return call

    monkeypatch.setattr(engine_module, "reevaluation_bound", counted("reevaluation_bound"))
    monkeypatch.setattr(engine_module, "next_reevaluation", counted("next_reevaluation"))
    bounded = Engine(agreement).run(events)

    assert decisions(bounded) == decisions(plain)
    demotions = [c for c in plain.stage_changes if c.from_stage is Stage.mql and c.to_stage is Stage.lead]
    assert len(demotions) > 20  # timers fire, and their order matters
    # Most leads get a new input before their bound: far fewer searches than armings.
    assert calls["next_reevaluation"] < calls["reevaluation_bound"] / 2


def test_routing_without_explanations_decides_the_same(events: list[Input], monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[str] = []

    def both(
        lead: RoutingInput, agreement: Agreement, situation: Situation, exclude: Collection[str] = (), *, explain: bool
    ) -> RoutingDecision:
        explained = route(lead, agreement, situation, exclude)
        quiet = route(lead, agreement, situation, exclude, explain=False)
        assert not explain and quiet.candidates == ()
        assert explained.candidates
        assert replace(explained, candidates=()) == quiet
        compared.append(explained.matched_by)
        return quiet

    monkeypatch.setattr(routing_state, "route", both)  # the simulator decides through the router's core
    results = Engine(AGREEMENTS["fast-decay-capacity"]).run(events)

    assert len(compared) > len(results.assignments) > 100
    assert {"rule", "open_domain_lead", "none"} <= set(compared)


def test_two_readers_read_the_stream_as_one(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=300, start=date(2026, 3, 2), days=6, seed=3), path)
    whole = read_stream(path)

    chunks = list(read_chunks(path, lines=100))
    assert [event for chunk in chunks for event in chunk] == whole
    assert len(chunks) > 5
    for share in (0.0, 0.3, 0.5, 0.99, 1.0):
        first, second = split_stream(path, share)
        assert (first.start, first.end, second.start, second.end) == (0, second.start, first.end, path.stat().st_size)
        assert path.read_bytes()[: second.start].count(b"\n") == second.lines_before
        assert read_stream(path, first) + read_stream(path, second) == whole


def test_reading_and_replaying_on_two_cores_decides_as_one_replay_after_another(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=300, start=date(2026, 3, 2), days=6, seed=3), path)
    baseline, candidate = AGREEMENTS["fast-decay"], AGREEMENTS["fast-decay-capacity"]
    events = read_stream(path)

    replayed = simulate_stream(path, baseline, candidate)
    alone = simulate_stream(path, candidate, candidate)

    assert replayed.events == events == alone.events
    assert decisions(replayed.baseline) == decisions(Engine(baseline).run(events))
    assert decisions(replayed.candidate) == decisions(Engine(candidate).run(events))
    assert decisions(alone.baseline) == decisions(alone.candidate) == decisions(replayed.candidate)
    assert replayed.reading_cpu > 0


def test_inputs_cross_to_another_process_unchanged_with_utc_for_a_zero_offset(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=50, start=date(2026, 3, 2), days=2, seed=5), path)
    events = read_stream(path)

    crossed = pickle.loads(dumps(events))

    assert crossed == events
    assert [event.model_dump_json() for event in crossed] == [event.model_dump_json() for event in events]
    assert all(event.occurred_at.tzinfo is UTC for event in crossed)
    assert [hash(event.event_id) for event in crossed] == [hash(event.event_id) for event in events]
    offset = datetime(2026, 3, 2, 9, tzinfo=TzInfo(3600))
    assert pickle.loads(dumps(offset)) == offset and pickle.loads(dumps(offset)).utcoffset() == timedelta(hours=1)


def test_every_reader_gets_every_item_in_order_and_the_folder_is_removed() -> None:
    reader: Streamed[list[int]] = Streamed(lambda: ([n] * 3 for n in range(40)), copies=2)
    second = list(reader.items(1))
    first = list(reader.items(0))
    reader.wait()
    folder = Path(reader.folder)
    assert folder.is_dir()
    reader.close()

    assert first == second == [[n] * 3 for n in range(40)]
    assert not folder.exists()


def test_a_reader_learns_when_the_child_dies_after_the_items_it_made() -> None:
    def die_after_three() -> Iterator[int]:
        yield from range(3)
        os._exit(3)

    reader: Streamed[int] = Streamed(die_after_three, copies=1)
    received = []
    with pytest.raises(ChildFailed, match="after 3 item"):
        for item in reader.items(0):
            received.append(item)
    reader.close()

    assert received == [0, 1, 2]


def test_a_replay_whose_reader_dies_reads_the_rest_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=300, start=date(2026, 3, 2), days=6, seed=3), path)
    events = read_stream(path)
    baseline, candidate = AGREEMENTS["fast-decay"], AGREEMENTS["fast-decay-capacity"]
    real_chunks = read_chunks

    def chunks_then_death(path: Path, part: Part | None = None, lines: int = 1 << 62) -> Iterator[list[Input]]:
        for number, chunk in enumerate(real_chunks(path, part, 200)):
            if number == 2:
                (tmp_path / "reader died").touch()
                os._exit(9)
            yield chunk

    monkeypatch.setattr(run_module, "read_chunks", chunks_then_death)
    replayed = simulate_stream(path, baseline, candidate)

    assert (tmp_path / "reader died").exists()
    assert replayed.events == events
    assert decisions(replayed.baseline) == decisions(Engine(baseline).run(events))
    assert decisions(replayed.candidate) == decisions(Engine(candidate).run(events))


@pytest.mark.parametrize("where", [0.2, 0.9])
def test_a_bad_line_in_either_part_is_reported_with_its_number_in_the_file(tmp_path: Path, where: float) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=200, start=date(2026, 3, 2), days=4, seed=9), path)
    lines = path.read_bytes().splitlines(keepends=True)
    bad = int(len(lines) * where)
    lines[bad] = b'{"at": "2026-03-02T10:00:00+00:00", "source": "webform", "kind": "lead", "body": {"type": "nope"}}\n'
    path.write_bytes(b"".join(lines))
    expected = rf"stream.jsonl:{bad + 1}: body does not validate"

    with pytest.raises(BadInput, match=expected):
        read_stream(path)
    with pytest.raises(BadInput, match=expected):
        simulate_stream(path, AGREEMENTS["fast-decay"], AGREEMENTS["fast-decay-capacity"])
