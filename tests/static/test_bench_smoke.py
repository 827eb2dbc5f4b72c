"""The benchmark's pure pieces, so `make bench` cannot rot between runs (it is never part of the suite)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bench.loadgen import Requests, parse_response
from bench.profile_summary import parse, summarise
from bench.run import FULL, QUICK, Ports, cpu_per_item
from bench.stats import RESULT_KEYS, cpu_seconds, percentile, result_line, sustained_rate, table
from services.intake.signatures import verify

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LW5vdC1mb3ItcHJvZHVjdGlvbg=="


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_sustained_rate_leaves_out_ramp_up_and_stragglers() -> None:
    steady = [i / 1000 for i in range(1000)]  # 1,000 per second
    assert sustained_rate(steady) == pytest.approx(1000, rel=0.01)
    late_start_and_straggler = [0.0, *[10 + i / 500 for i in range(1000)], 60.0]
    assert sustained_rate(late_start_and_straggler) == pytest.approx(500, rel=0.01)
    assert math.isinf(sustained_rate([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError):
        sustained_rate([1.0])


def test_result_line_has_exactly_the_documented_keys_in_order() -> None:
    results = {key: float(index) + 0.123 for index, key in enumerate(RESULT_KEYS)}
    results["sla_open_deadlines"] = 1_000_000
    results["e2e_p99_ms"] = math.nan
    line = result_line(results)
    decoded = orjson.loads(line)
    assert list(decoded) == [
        "intake_rps",
        "intake_baseline_rps",
        "intake_batch_events_per_s",
        "e2e_leads_per_s",
        "relay_baseline_per_s",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "sla_open_deadlines",
        "sla_fire_lag_p99_ms",
        "sla_fire_rate_per_s",
    ]
    assert decoded["intake_rps"] == 0.1
    assert decoded["sla_open_deadlines"] == 1_000_000
    assert decoded["e2e_p99_ms"] is None
    assert "\n" not in line
    with pytest.raises(ValueError, match="missing"):
        result_line({key: 1.0 for key in RESULT_KEYS[1:]})
    with pytest.raises(ValueError, match="unexpected"):
        result_line({**results, "extra": 1.0})


def test_table_lines_up_values_and_notes() -> None:
    text = table(
        [("intake_rps", 1234.5, "60% of baseline"), ("sla_open_deadlines", 1_000_000, ""), ("x", math.nan, "")]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["measure", "value", "note"]
    assert "1,234.5" in lines[2] and lines[2].endswith("60% of baseline")
    assert "1,000,000" in lines[3]
    assert "n/a" in lines[4]


def test_cpu_seconds_reads_proc_stat_and_per_item_milliseconds() -> None:
    stat = "4242 (python -m x) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 7 3 20 0 1 0 100 0 0"
    assert cpu_seconds(stat) == 2.0
    assert cpu_seconds(stat, children=True) == 2.1
    assert cpu_per_item({"a": 1.0}, {"a": 3.0, "b": 1.0}, 1000) == {"a": 2.0, "b": 1.0}


def test_parse_response_waits_for_the_whole_body() -> None:
    response = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    assert parse_response(response[:-1]) is None
    assert parse_response(response) == (202, b"{}", len(response))
    assert parse_response(response + b"HTTP/1.1 ...") == (202, b"{}", len(response))


def test_generated_requests_are_signed_as_the_intake_verifies_them() -> None:
    requests = Requests(host="127.0.0.1:1", path="/v1/webhooks/bench/events", secret=SECRET, batch=3)
    prepared = requests.build()
    head, _, body = prepared.raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/webhooks/bench/events HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["content-length"]) == len(body)
    assert len(orjson.loads(body)["events"]) == len(prepared.lead_ids) == 3
    now = datetime.now(UTC)
    assert verify(headers, body, [SECRET], now, timedelta(minutes=5)) == headers["webhook-id"]
    assert requests.build().lead_ids[0] != prepared.lead_ids[0]


def test_profile_summary_adds_up_samples_per_function() -> None:
    stacks = parse(
        [
            "main (app.py:1);handle (app.py:10);query (db.py:5) 3",
            "main (app.py:1);handle (app.py:12) 1",
            "garbage",
        ]
    )
    total, inclusive, own = summarise(stacks)
    assert total == 4
    assert inclusive["handle (app.py)"] == 4
    assert own["query (db.py)"] == 3


def test_plans_fit_their_slices_and_ports_do_not_meet_the_tests() -> None:
    for plan in (QUICK, FULL):
        assert plan.sla_open > plan.sla_steady_rate * plan.sla_steady_seconds + plan.sla_burst
    assert FULL.sla_open == 1_000_000
    assert FULL.latency_rate == 500
    ports = Ports(34000)
    test_ports = {34092, 34093, 34432}  # tests/support/infra.py on the same base
    ours = {ports.kafka, ports.controller, ports.postgres, ports.intake, ports.baseline}
    ours |= {ports.metrics(name) for name in ("intake", "scoring", "router", "sla-monitor")}
    assert not ours & test_ports
    assert len(ours) == 9
