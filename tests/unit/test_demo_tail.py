"""`coxswain demo tail` shows why a lead went to its rep, in words, on the lead's own line."""

from __future__ import annotations

import orjson

from coxswain_app.demo import tail_line


def test_a_routed_lead_shows_its_rep_and_the_reason_in_plain_words() -> None:
    routed = {
        "lead_id": "5b0c7f3e-0000-4000-8000-000000000001",
        "rep_id": "ava",
        "pool_id": "account-owner",
        "matched_by": "open_domain_lead",
        "tier": "warm",
        "follow_up_due_at": "2026-12-03T21:05:00Z",
        "candidates": [{"rep_id": "ava"}],
        "reason": "same domain (acme.com) as open lead 5b0c7f3e-0000-4000-8000-000000000000 held by ava",
    }

    line = tail_line("leads.routed.v1", routed)

    fields, why = line.split("  why: ")
    assert why == routed["reason"]
    assert fields.startswith("leads.routed.v1    {")
    assert orjson.loads(fields.removeprefix("leads.routed.v1").strip()) == {
        k: routed[k] for k in ("lead_id", "rep_id", "pool_id", "matched_by", "tier", "follow_up_due_at")
    }


def test_a_fact_without_a_reason_has_no_why() -> None:
    line = tail_line("sla.met.v1", {"lead_id": "x", "rep_id": "ava", "due_at": "2026-12-03T21:05:00Z"})

    assert "why:" not in line
    assert line == 'sla.met.v1         {"lead_id":"x","rep_id":"ava","due_at":"2026-12-03T21:05:00Z"}'
