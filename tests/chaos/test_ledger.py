"""The chaos ledger counts what it claims to count: a green chaos run means something."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chaos.ledger import HEADLINE, REQUIRED_FAULTS, RESTORE_FAULTS, Fact, Observed, SentLead, SentTouch, compute

DUE = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def observed(**overrides: object) -> Observed:
    base: dict[str, object] = {
        "stored_webhooks": frozenset({"w1", "w2", "w3", "t1"}),
        "touch_received": {"a": DUE - timedelta(seconds=5)},
        "db_assignments": {"a": 1, "b": 1},
        "db_breached": {"b": 1},
        "routed": [Fact("r-a", "a", DUE), Fact("r-b", "b", DUE)],
        "breached": [Fact("x-b", "b")],
        "met": [Fact("m-a", "a")],
    }
    return Observed(**(base | overrides))  # type: ignore[arg-type]


LEADS = [
    SentLead("a", "w1", qualifies=True, acknowledged=True),
    SentLead("b", "w2", qualifies=True, acknowledged=True),
    SentLead("c", "w3", qualifies=False, acknowledged=True),
]
TOUCHES = [SentTouch("a", "t1", acknowledged=True)]


def test_a_clean_run_passes_with_every_acceptance_key_first() -> None:
    report = compute(LEADS, TOUCHES, observed(), REQUIRED_FAULTS)
    assert list(report.headline())[: len(HEADLINE)] == list(HEADLINE)
    assert report.counts["routed"] == 2
    assert report.counts["breaches_expected"] == 1
    assert report.counts["breaches_emitted"] == 1
    assert report.counts["answered_in_time"] == 1
    assert report.passed


def test_a_redelivered_record_with_the_same_event_id_is_not_a_duplicate() -> None:
    again = observed(routed=[Fact("r-a", "a", DUE), Fact("r-a", "a", DUE), Fact("r-b", "b", DUE)])
    assert compute(LEADS, TOUCHES, again, REQUIRED_FAULTS).counts["duplicate_assignments"] == 0


def test_a_second_routing_decision_is_a_duplicate_assignment_on_the_topic_or_in_the_database() -> None:
    on_topic = observed(routed=[Fact("r-a", "a", DUE), Fact("r-a2", "a", DUE), Fact("r-b", "b", DUE)])
    in_db = observed(db_assignments={"a": 2, "b": 1})
    assert compute(LEADS, TOUCHES, on_topic, REQUIRED_FAULTS).counts["duplicate_assignments"] == 1
    assert compute(LEADS, TOUCHES, in_db, REQUIRED_FAULTS).counts["duplicate_assignments"] == 1


def test_an_acknowledged_webhook_missing_from_the_database_is_lost() -> None:
    report = compute(LEADS, TOUCHES, observed(stored_webhooks=frozenset({"w1", "w3", "t1"})), REQUIRED_FAULTS)
    assert report.counts["lost"] == 1
    assert not report.passed


def test_a_stored_qualifying_lead_that_never_reaches_the_topic_is_lost() -> None:
    report = compute(LEADS, TOUCHES, observed(routed=[Fact("r-a", "a", DUE)]), REQUIRED_FAULTS)
    assert report.counts["unrouted"] == 1
    assert report.counts["lost"] == 1


def test_breaches_are_counted_per_deadline_missed_duplicated_and_wrongly_fired() -> None:
    missed = compute(LEADS, TOUCHES, observed(breached=[], db_breached={}), REQUIRED_FAULTS)
    twice = compute(LEADS, TOUCHES, observed(breached=[Fact("x-b", "b"), Fact("x-b2", "b")]), REQUIRED_FAULTS)
    answered = compute(LEADS, TOUCHES, observed(breached=[Fact("x-b", "b"), Fact("x-a", "a")]), REQUIRED_FAULTS)
    assert missed.counts["missed_breaches"] == 1
    assert twice.counts["duplicate_breaches"] == 1
    assert answered.counts["breaches_for_answered_leads"] == 1
    assert not (missed.passed or twice.passed or answered.passed)


def test_a_touch_received_after_the_deadline_expects_a_breach() -> None:
    late = observed(touch_received={"a": DUE + timedelta(seconds=1)}, met=[], breached=[Fact("x-b", "b")])
    report = compute(LEADS, TOUCHES, late, REQUIRED_FAULTS)
    assert report.counts["breaches_expected"] == 2
    assert report.counts["missed_breaches"] == 1


def test_a_routed_lead_that_should_not_qualify_fails_the_run() -> None:
    report = compute(LEADS, TOUCHES, observed(db_assignments={"a": 1, "b": 1, "c": 1}), REQUIRED_FAULTS)
    assert report.counts["unexpected_routings"] == 1
    assert not report.passed


def test_a_run_without_every_kind_of_fault_does_not_pass() -> None:
    report = compute(LEADS, TOUCHES, observed(), [f for f in REQUIRED_FAULTS if f != "restart:postgres"])
    assert all(report.counts[key] == 0 for key in ("lost", "duplicate_assignments", "missed_breaches"))
    assert not report.passed


def test_the_restore_scenario_passes_only_once_the_database_was_backed_up_and_restored() -> None:
    assert compute(LEADS, TOUCHES, observed(), RESTORE_FAULTS, RESTORE_FAULTS).passed
    assert not compute(LEADS, TOUCHES, observed(), ["backup:postgres"], RESTORE_FAULTS).passed
    # The faults run's own list does not stand in for it.
    assert not compute(LEADS, TOUCHES, observed(), REQUIRED_FAULTS, RESTORE_FAULTS).passed
