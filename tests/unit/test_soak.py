"""The soak run's pure pieces (chaos/soak/stats.py): `make soak` is never part of the suite, so
its windows, percentiles, /proc parsing and verdict are checked here."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from chaos.load import Webhook
from chaos.soak.sender import RawSender
from chaos.soak.stats import (
    MIB,
    Check,
    Lead,
    Result,
    Sample,
    TableSize,
    Tolerance,
    Window,
    aggregate,
    bounded_checks,
    delivery_check,
    memory_checks,
    parent_pid,
    percentile,
    pss,
    rate_check,
    rss_anon,
    summary_tables,
    trend_mib_per_hour,
    vm_rss,
    window_bounds,
    window_report,
)


def window(
    index: int, *, rss: dict[str, int] | None = None, rows: dict[str, int] | None = None, **figures: int
) -> Window:
    length = 300.0
    return Window(
        index=index,
        start=index * length,
        end=(index + 1) * length,
        samples=30,
        rss_max=rss or {},
        rss_last=rss or {},
        tables_last={name: TableSize(count, count * 100) for name, count in (rows or {}).items()},
        rows_max=rows or {},
        outbox_max=figures.get("outbox_max"),
        outbox_last=figures.get("outbox_last"),
        sent=figures.get("sent", 0),
        acknowledged=figures.get("acknowledged", 0),
        routed=figures.get("routed", 0),
        unrouted=figures.get("unrouted", 0),
        p50_ms=None,
        p99_ms=None,
        max_ms=None,
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 1000.0], 99) == 1000.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_windows_cover_the_duration_and_a_short_remainder_joins_the_last() -> None:
    assert window_bounds(1800, 300) == [(0, 300), (300, 600), (600, 900), (900, 1200), (1200, 1500), (1500, 1800)]
    assert window_bounds(1810, 300)[-1] == (1500, 1810)
    assert window_bounds(1700, 300)[-1] == (1500, 1700)
    assert window_bounds(60, 300) == [(0, 60)]
    with pytest.raises(ValueError):
        window_bounds(0, 300)


def test_a_window_holds_its_own_samples_leads_and_backlog() -> None:
    samples = [
        Sample(0.0, {"router": 100 * MIB}, {"inbox": TableSize(10, 1000)}),
        Sample(50.0, {"router": 120 * MIB}, {"inbox": TableSize(30, 3000)}),
        Sample(90.0, {"router": 110 * MIB}, {"inbox": TableSize(20, 2000)}),
        Sample(100.0, {"router": 500 * MIB}, {"inbox": TableSize(999, 99900)}),  # the next window's
    ]
    outbox = [(10.0, 5), (2.0, 40), (95.0, 3), (150.0, 900)]
    leads = [
        Lead(sent_at=1.0, acknowledged=True, qualifies=True, latency_ms=10.0),
        Lead(sent_at=2.0, acknowledged=True, qualifies=True, latency_ms=30.0),
        Lead(sent_at=3.0, acknowledged=True, qualifies=True, latency_ms=None),  # lost
        Lead(sent_at=4.0, acknowledged=True, qualifies=False, latency_ms=None),  # never routed, by design
        Lead(sent_at=5.0, acknowledged=False, qualifies=True, latency_ms=None),  # not acknowledged
        Lead(sent_at=150.0, acknowledged=True, qualifies=True, latency_ms=2000.0),
    ]

    first, second = aggregate([(0, 100), (100, 200)], samples, outbox, leads)

    assert (first.samples, second.samples) == (3, 1)
    assert first.rss_max == {"router": 120 * MIB}
    assert first.rss_last == {"router": 110 * MIB}
    assert first.rows_max == {"inbox": 30}
    assert first.tables_last == {"inbox": TableSize(20, 2000)}
    assert (first.outbox_max, first.outbox_last) == (40, 3)
    assert (first.sent, first.acknowledged, first.routed, first.unrouted) == (5, 4, 2, 1)
    assert (first.p50_ms, first.p99_ms, first.max_ms) == (10.0, 30.0, 30.0)
    assert (second.sent, second.routed, second.p99_ms, second.outbox_max) == (1, 1, 2000.0, 900)
    assert second.rss_max == {"router": 500 * MIB}


def test_a_window_without_samples_or_leads_has_no_figures() -> None:
    [empty] = aggregate([(0, 100)], [], [], [])

    assert (empty.samples, empty.sent, empty.outbox_max, empty.p99_ms) == (0, 0, None, None)
    assert empty.rss_max == {} and empty.tables_last == {}


def test_memory_is_flat_when_the_last_window_stays_within_the_tolerance_of_the_second() -> None:
    tolerance = Tolerance(rss_fraction=0.20, rss_bytes=30 * MIB)
    windows = [
        window(0, rss={"router": 50 * MIB, "kafka": 300 * MIB}),  # warm-up: ignored
        window(1, rss={"router": 100 * MIB, "kafka": 500 * MIB}),
        window(2, rss={"router": 500 * MIB, "kafka": 500 * MIB}),
        window(3, rss={"router": 130 * MIB, "kafka": 600 * MIB}),
    ]

    checks = {check.name: check for check in memory_checks(windows, ["router", "kafka"], tolerance)}

    # +30 MiB is more than 20% of 100 MiB; 20% is more than 30 MiB of 500 MiB.
    assert checks["memory flat: router"].passed
    assert checks["memory flat: kafka"].passed
    assert "allowed 130.0 MiB" in checks["memory flat: router"].detail

    grown = [*windows[:-1], window(3, rss={"router": 131 * MIB, "kafka": 601 * MIB})]
    checks = {check.name: check for check in memory_checks(grown, ["router", "kafka"], tolerance)}
    assert not checks["memory flat: router"].passed
    assert not checks["memory flat: kafka"].passed


def test_memory_cannot_be_called_flat_without_a_warm_up_a_reference_and_a_last_window() -> None:
    two = [window(0, rss={"router": MIB}), window(1, rss={"router": MIB})]
    [check] = memory_checks(two, ["router"], Tolerance())
    assert not check.passed and "needs 3 windows" in check.detail

    missing = [window(0), window(1, rss={"router": MIB}), window(2)]
    [check] = memory_checks(missing, ["router"], Tolerance())
    assert not check.passed and "not sampled" in check.detail


def test_a_table_is_bounded_once_it_stops_growing_after_retention_had_time_to_act() -> None:
    tolerance = Tolerance(rows_fraction=0.10, rows_slack=100)
    # Settled after 600 s: windows 3 to 6 (from index 2) count; the growth before does not.
    growing_then_flat = [
        window(0, rows={"inbox": 10_000}),
        window(1, rows={"inbox": 90_000}),
        window(2, rows={"inbox": 120_000}),
        window(3, rows={"inbox": 118_000}),
        window(4, rows={"inbox": 119_000}),
        window(5, rows={"inbox": 132_000}),  # within 10% of 120,000
    ]
    [check] = bounded_checks(growing_then_flat, ["inbox"], 600, tolerance)
    assert check.passed, check.detail
    assert "earlier settled peak 120,000 (windows 3-5)" in check.detail

    still_growing = [*growing_then_flat[:-1], window(5, rows={"inbox": 132_001})]
    [check] = bounded_checks(still_growing, ["inbox"], 600, tolerance)
    assert not check.passed

    # A small table may move by the slack: 100 rows more than a peak of 50.
    small = [window(2, rows={"outbox": 50}), window(3, rows={"outbox": 150})]
    [check] = bounded_checks(small, ["outbox"], 600, tolerance)
    assert check.passed
    small = [window(2, rows={"outbox": 50}), window(3, rows={"outbox": 151})]
    [check] = bounded_checks(small, ["outbox"], 600, tolerance)
    assert not check.passed


def test_the_outbox_is_judged_by_its_frequent_backlog_samples_too() -> None:
    windows = [
        window(2, rows={"outbox": 10}, outbox_max=20),
        window(3, rows={"outbox": 10}, outbox_max=5_000),
    ]
    [check] = bounded_checks(windows, ["outbox"], 600, Tolerance())
    assert not check.passed
    assert "5,000 rows" in check.detail


def test_bounded_needs_two_windows_after_retention_had_time_to_act() -> None:
    windows = [window(0, rows={"inbox": 1}), window(1, rows={"inbox": 1}), window(2, rows={"inbox": 1})]
    [check] = bounded_checks(windows, ["inbox"], 601, Tolerance())
    assert not check.passed
    assert "needs 2 windows starting after" in check.detail


def test_delivery_fails_on_an_unacknowledged_an_unrouted_or_a_duplicated_lead() -> None:
    fine = [window(0, sent=10, acknowledged=10), window(1, sent=5, acknowledged=5)]
    assert delivery_check(fine, duplicates=0).passed
    assert not delivery_check(fine, duplicates=1).passed
    assert not delivery_check([window(0, sent=10, acknowledged=9)], duplicates=0).passed
    assert not delivery_check([window(0, sent=10, acknowledged=10, unrouted=1)], duplicates=0).passed


def test_the_rate_is_held_when_every_window_sent_nine_tenths_of_what_was_offered() -> None:
    held = [window(0, sent=6000), window(1, sent=5400)]  # 20/s for 300 s offers 6,000
    assert rate_check(held, rate=20).passed

    short = [window(0, sent=6000), window(1, sent=5399), window(2, sent=6000)]
    check = rate_check(short, rate=20)
    assert not check.passed
    assert "window 2 short: 18.0/s" in check.detail
    assert not rate_check([], rate=20).passed


def test_the_trend_is_a_least_squares_slope_after_the_warm_up() -> None:
    samples = [Sample(float(t), {"router": 100 * MIB + t * 1024}, {}) for t in range(0, 3600, 10)]
    samples.insert(0, Sample(-1.0, {"router": 0}, {}))  # before the warm-up ended: left out
    assert trend_mib_per_hour(samples, "router", after=0) == pytest.approx(3600 / 1024)
    flat = [Sample(float(t), {"router": 100 * MIB}, {}) for t in range(10)]
    assert trend_mib_per_hour(flat, "router", after=0) == 0
    assert trend_mib_per_hour(flat[:1], "router", after=0) is None
    assert trend_mib_per_hour(flat, "kafka", after=0) is None


def test_proc_files_are_read_in_bytes() -> None:
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t  123456 kB\nRssAnon:\t 2345 kB\nRssShmem:\t 9 kB\n"
    assert vm_rss(status) == 123456 * 1024
    assert rss_anon(status) == 2345 * 1024
    assert vm_rss("Name:\tkthreadd\nState:\tS (sleeping)\n") is None
    rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:   2048 kB\nPss:   1024 kB\nPss_Anon: 512 kB\n"
    assert pss(rollup) == 1024 * 1024
    assert parent_pid("4242 (postgres: wal (writer)) S 4200 4242 4242 0 -1") == 4200


def test_reports_name_every_process_and_table() -> None:
    windows = [
        window(0, rss={"router": 100 * MIB}, rows={"inbox": 1234}, outbox_max=7, sent=600, routed=540),
        window(1, rss={"router": 101 * MIB}, rows={"inbox": 2345}, outbox_max=3, sent=600, routed=540),
    ]

    block = window_report(windows[1], ["router", "kafka"], ["inbox"])
    assert block.startswith("window 2 (5:00-10:00, 30 samples): sent 600")
    assert "router 101.0, kafka -" in block
    assert "inbox 2,345/0.2" in block
    tables = summary_tables(windows, ["router"], ["inbox"])
    assert "1 (0:00-5:00)" in tables and "2 (5:00-10:00)" in tables
    assert "2,345" in tables and "101.0" in tables
    on_disk = tables.split("MiB on disk")[1]
    assert "0.1" in on_disk and "0.2" in on_disk  # 1,234 and 2,345 rows of 100 bytes each


def test_the_result_passes_only_when_every_check_does_and_its_headline_is_json() -> None:
    windows = [window(0, rss={"router": 100 * MIB}, rows={"inbox": 5}, sent=3, acknowledged=3)]
    passing = Result(windows, [Check("a", True, ""), Check("b", True, "")], {"minutes": 30})
    failing = Result(windows, [Check("a", True, ""), Check("b", False, "")], {"minutes": 30})

    assert passing.passed and not failing.passed
    assert not Result(windows, [], {}).passed
    headline = orjson.loads(orjson.dumps(failing.headline()))
    assert headline["passed"] is False
    assert headline["failed"] == ["b"]
    assert headline["windows"][0]["rss_mib"] == {"router": 100.0}
    assert headline["windows"][0]["rows"] == {"inbox": 5}


async def test_the_raw_sender_retries_an_overloaded_intake_with_the_same_id_and_stops_on_a_refusal() -> None:
    answers = iter([503, 429, 202, 400])
    seen: list[tuple[bytes, bytes]] = []
    connections: list[asyncio.Future[None]] = []

    async def intake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ended = asyncio.get_running_loop().create_future()
        connections.append(ended)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
                body = await reader.readexactly(int(fields[b"content-length"]))
                seen.append((fields[b"webhook-id"], body))
                status = next(answers)
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}".encode())
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()
            await writer.wait_closed()
        finally:
            ended.set_result(None)

    server = await asyncio.start_server(intake, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = RawSender("127.0.0.1", port, "whsec_" + "c29hay10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWI=", connections=2)
    try:
        accepted = Webhook("soak-1", "/v1/webhooks/webform/events", {"type": "page_view"})
        await sender.deliver(accepted)
        refused = Webhook("soak-2", "/v1/webhooks/webform/events", {"type": "page_view"})
        await sender.deliver(refused)
    finally:
        sender.close()
        await asyncio.gather(*connections)  # each ends when the sender's side closes
        server.close()
        await server.wait_closed()

    assert accepted.acknowledged and accepted.acknowledged_at is not None and accepted.attempts == 3
    assert [webhook_id for webhook_id, _ in seen] == [b"soak-1", b"soak-1", b"soak-1", b"soak-2"]
    assert {body for _, body in seen[:3]} == {b'{"type":"page_view"}'}
    assert not refused.acknowledged and refused.refused_status == 400 and refused.attempts == 1
    assert sender.statuses == {"503": 1, "429": 1, "202": 1, "400": 1}
