"""The simulation engine, the generator and the simulate command, without Kafka or a database."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from coxswain.core.agreement import load_agreement, load_agreement_text
from coxswain.core.identity import lead_id_for
from coxswain.core.sla import first_touch_due
from coxswain.simulation.engine import Engine
from coxswain.simulation.generate import StreamSpec, generate, write_stream
from coxswain.simulation.inputs import BadInput, read_stream
from coxswain.simulation.report import jain
from coxswain.simulation.run import Request, execute
from schemas.events import ActivityRecordedV1, ActivityType, EngagementType, LeadAttributes, LeadReceivedV1, Stage

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agreement.yaml"
E2E = ROOT / "tests" / "e2e" / "agreement_simulation.yaml"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def received(
    email: str, at: datetime, engagement: EngagementType = EngagementType.demo_request, title: str = "VP Sales"
) -> LeadReceivedV1:
    return LeadReceivedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id_for(email, "webform", None),
        occurred_at=at,
        source="webform",
        webhook_id="unit",
        engagement=engagement,
        attributes=LeadAttributes(email=email, title=title, company_size=300, country="US"),
    )


def activity(email: str, kind: ActivityType, at: datetime) -> ActivityRecordedV1:
    return ActivityRecordedV1(
        event_id=uuid.uuid4(),
        lead_id=lead_id_for(email, "webform", None),
        occurred_at=at,
        source="crm",
        webhook_id="unit",
        activity=kind,
    )


def test_a_demo_request_qualifies_and_is_routed_at_its_time_with_the_agreements_deadline() -> None:
    agreement = load_agreement(E2E)
    results = Engine(agreement).run([received("a@one.example.com", T0)])
    [change] = results.stage_changes
    assert (change.from_stage, change.to_stage, change.at) == (Stage.lead, Stage.mql, T0)
    [assignment] = results.assignments
    assert assignment.pool_id == "sim-general" and assignment.at == T0
    assert assignment.due == first_touch_due(agreement, assignment.tier, T0, rep_id=assignment.rep_id)


def test_rotation_follows_the_weights_and_a_same_domain_lead_goes_to_the_open_owner() -> None:
    engine = Engine(load_agreement(E2E))
    events = [received(f"p{i}@c{i}.example.com", T0 + timedelta(minutes=i)) for i in range(8)]
    events.append(received("other@c0.example.com", T0 + timedelta(hours=1)))
    results = engine.run(events)
    reps = [a.rep_id for a in results.assignments]
    assert sorted(reps[:8]).count("sim-ann") == 4  # weight 2 of 4
    assert results.assignments[8].matched_by == "open_domain_lead"
    assert reps[8] == reps[0]
    # The same words as the live router's leads.routed.v1 (coxswain.core.routing.route).
    first = results.assignments[0].lead_id
    assert results.assignments[8].reason == f"same domain (c0.example.com) as open lead {first} held by {reps[0]}"


def test_of_open_leads_opened_at_one_instant_the_reason_names_the_highest_id_as_the_router_does() -> None:
    # The router reads a domain's open leads ORDER BY opened_at DESC, lead_id DESC; the simulator
    # must name the same lead when several were opened at the same instant.
    engine = Engine(load_agreement(E2E))
    results = engine.run(
        [
            received("b@tie.example.com", T0),
            received("a@tie.example.com", T0),
            received("c@tie.example.com", T0 + timedelta(minutes=1)),
        ]
    )
    first, second, third = results.assignments
    assert second.matched_by == third.matched_by == "open_domain_lead"
    assert first.lead_id > second.lead_id  # so the last opened is not the one to name
    assert third.reason == f"same domain (tie.example.com) as open lead {first.lead_id} held by {first.rep_id}"


def test_an_accepted_lead_releases_its_domain_and_a_response_meets_the_deadline() -> None:
    engine = Engine(load_agreement(E2E))
    results = engine.run(
        [
            received("first@acme.example.com", T0),
            activity("first@acme.example.com", ActivityType.first_touch, T0 + timedelta(minutes=5)),
            activity("first@acme.example.com", ActivityType.sal_accepted, T0 + timedelta(minutes=10)),
            received("second@acme.example.com", T0 + timedelta(hours=1)),
        ]
    )
    first, second = results.assignments
    assert first.sla == "met" and first.responded_at == T0 + timedelta(minutes=5)
    assert second.matched_by == "rule"  # the first lead no longer holds the domain
    assert second.sla == "armed"


def test_an_activity_the_lifecycle_refuses_is_counted_not_raised() -> None:
    results = Engine(load_agreement(E2E)).run(
        [
            received("x@y.example.com", T0, EngagementType.page_view),
            activity("x@y.example.com", ActivityType.sal_accepted, T0 + timedelta(minutes=1)),
            activity("nobody@y.example.com", ActivityType.first_touch, T0 + timedelta(minutes=2)),
        ]
    )
    assert len(results.rejected) == 2
    assert results.assignments == []


def test_a_decaying_mql_is_demoted_by_its_timer_before_a_later_input() -> None:
    agreement = load_agreement_text(
        E2E.read_text()
        .replace("half_life: 365d", "half_life: 1d")
        .replace("    - { id: demo-request, event: demo_request, tier: hot }\n", "")
    )
    later = T0 + timedelta(days=30)
    results = Engine(agreement).run(
        [
            received("d@decay.example.com", T0, title="Engineer"),  # fit 20 + demo 40 = 60, the MQL entry
            received("e@else.example.com", later, EngagementType.page_view),
        ]
    )
    stages = [
        (c.to_stage, c.at)
        for c in results.stage_changes
        if c.lead_id == lead_id_for("d@decay.example.com", "webform", None)
    ]
    assert stages[0] == (Stage.mql, T0)
    assert stages[1][0] is Stage.lead and T0 < stages[1][1] < later


def test_the_same_stream_gives_the_same_decisions() -> None:
    lines = list(generate(StreamSpec(leads=60, start=date(2026, 3, 2), days=5, seed=5)))
    assert lines == list(generate(StreamSpec(leads=60, start=date(2026, 3, 2), days=5, seed=5)))
    assert lines != list(generate(StreamSpec(leads=60, start=date(2026, 3, 2), days=5, seed=6)))
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)


def test_stream_round_trip_and_determinism(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=80, start=date(2026, 3, 2), days=5, seed=2), path)
    events = read_stream(path)
    agreement = load_agreement(EXAMPLE)
    one, two = Engine(agreement).run(events), Engine(agreement).run(read_stream(path))
    assert [(a.lead_id, a.rep_id, a.due) for a in one.assignments] == [
        (a.lead_id, a.rep_id, a.due) for a in two.assignments
    ]
    assert one.stage_changes == two.stage_changes
    assert one.assignments


def test_bad_lines_are_reported_with_their_place(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"at": "2026-03-02T10:00:00+00:00", "source": "webform", "kind": "lead", "body": {"type": "nope"}}\n'
    )
    with pytest.raises(BadInput, match=r"bad.jsonl:1: body does not validate"):
        read_stream(path)
    path.write_bytes(b"not json\n")
    with pytest.raises(BadInput, match=r"bad.jsonl:1: not JSON"):
        read_stream(path)


def test_jain_index() -> None:
    assert jain([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain([3.0, 0.0, 0.0]) == pytest.approx(1 / 3)


def test_simulate_exit_codes_report_and_guards(tmp_path: Path) -> None:
    stream = tmp_path / "stream.jsonl"
    write_stream(StreamSpec(leads=150, start=date(2026, 3, 2), days=7, seed=4), stream)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        EXAMPLE.read_text()
        .replace('version: "2026.11-1"', 'version: "candidate"')
        .replace("{ rep: ava, weight: 2 }, { rep: ben, weight: 1 }", "{ rep: ava, weight: 1 }, { rep: ben, weight: 3 }")
    )
    report = tmp_path / "report.html"
    calm = execute(Request(candidate, EXAMPLE, stream, html=report, decisions=tmp_path / "d.jsonl"))
    assert calm.code == 0, calm.text
    assert "leads/s on one core" in calm.text and "all guards hold" in calm.text
    assert calm.comparison is not None and calm.comparison.route_changes > 0
    page = report.read_text()
    assert page.count("<svg") == 4 and "candidate" in page
    decisions = [orjson.loads(line) for line in (tmp_path / "d.jsonl").read_bytes().splitlines()]
    # The example's hot ladder runs in the replay too: untouched hot leads escalate.
    assert {d["kind"] for d in decisions} == {"stage_changed", "routed", "escalated"}
    assert {d["step"] for d in decisions if d["kind"] == "escalated"} <= {
        "remind_rep",
        "notify_manager",
        "reassign",
        "page_oncall",
    }

    policy = tmp_path / "policy.yaml"
    policy.write_text("max_route_change_pct: 0.5\nmin_fairness: 0.5\n")
    strict = execute(Request(candidate, EXAMPLE, stream, policy=policy))
    assert strict.code == 1
    assert "GUARD CROSSED" in strict.text and "change route" in strict.text

    policy.write_text("max_typo: 3\n")
    assert execute(Request(candidate, EXAMPLE, stream, policy=policy)).code == 2
    missing = execute(Request(candidate, EXAMPLE, tmp_path / "missing.jsonl"))
    assert missing.code == 2 and "no such file" in missing.text
    both = execute(Request(candidate, EXAMPLE, stream, from_db=True))
    assert both.code == 2 and "exactly one input" in both.text
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nscoring: nonsense\n")
    assert execute(Request(broken, EXAMPLE, stream)).code == 2


def with_ladder(cap: int, *steps: tuple[str, str]) -> str:
    """The e2e simulation agreement with a hot ladder of ``steps`` and ``max_reassignments``."""
    ladder = ", ".join(f"{{ step: {step}, after: {after} }}" for step, after in steps)
    return (
        E2E.read_text()
        .replace('version: "e2e-simulation-1"', 'version: "ladder"')
        .replace(
            "hot: { first_touch: 2h }",
            f"hot: {{ first_touch: 10m, max_reassignments: {cap}, escalation: [{ladder}] }}",
        )
    )


def test_the_simulated_ladder_goes_on_across_a_reassignment_and_pages_once() -> None:
    agreement = load_agreement_text(with_ladder(2, ("remind_rep", "0s"), ("reassign", "10m"), ("page_oncall", "30m")))
    results = Engine(agreement).run(
        [
            received("untouched@ladder.example.com", T0),
            # Another lead, hours later, only to move the clock on.
            received("later@elsewhere.example.com", T0 + timedelta(hours=3), EngagementType.page_view),
        ]
    )

    first, second = [
        a for a in results.assignments if a.lead_id == lead_id_for("untouched@ladder.example.com", "webform", None)
    ]
    assert second.at == T0 + timedelta(minutes=20), "reassigned 10 minutes after the breach"
    assert second.rep_id != first.rep_id and (first.sla, second.sla) == ("breached", "breached")
    assert second.reassignments == 1 and first.superseded
    steps = [(e.step, e.rep_id, e.at - T0) for e in results.escalations]
    assert steps == [
        ("remind_rep", first.rep_id, timedelta(minutes=10)),
        ("reassign", first.rep_id, timedelta(minutes=20)),
        ("page_oncall", second.rep_id, timedelta(minutes=40)),  # 30 minutes after the first breach
    ]


def test_the_simulated_ladder_pages_instead_of_reassigning_past_the_cap_and_stops_at_a_response() -> None:
    text = with_ladder(1, ("reassign", "5m"), ("reassign", "10m"), ("page_oncall", "30m"))
    lead = "capped@ladder.example.com"
    results = Engine(load_agreement_text(text)).run(
        [received(lead, T0), received("later@elsewhere.example.com", T0 + timedelta(hours=3), EngagementType.page_view)]
    )
    ours = [a for a in results.assignments if a.lead_id == lead_id_for(lead, "webform", None)]
    assert len(ours) == 2, "not reassigned beyond the cap"
    assert [(e.step, e.step_index) for e in results.escalations] == [("reassign", 0), ("page_oncall", 1)]

    answered = Engine(load_agreement_text(text)).run(
        [
            received(lead, T0),
            activity(lead, ActivityType.first_touch, T0 + timedelta(minutes=12)),  # breached, then answered
            received("later@elsewhere.example.com", T0 + timedelta(hours=3), EngagementType.page_view),
        ]
    )
    assert [e.step for e in answered.escalations] == [], "the response stopped the ladder before its first step"
