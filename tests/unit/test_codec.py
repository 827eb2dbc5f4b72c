"""Kafka wire format: round trips, CloudEvents headers, and precise DecodeErrors for bad records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import MAX_RECORD_BYTES, DecodeError, Headers, decode, encode, header
from schemas.events import (
    ALL_EVENTS,
    AUDIT_KEY,
    EVENTS_BY_TOPIC,
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    ActivityType,
    AdminActionAuditedV1,
    Attainment,
    CandidateVerdict,
    EngagementType,
    EscalationAction,
    Event,
    LatencyPercentiles,
    LeadAttributes,
    LeadErasedV1,
    LeadMergedV1,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadRoutedV1,
    LeadScoredV1,
    LeadStageChangedV1,
    LeadUnassignedV1,
    MarketingScorecard,
    MqlPacingAlertV1,
    MqlTargetResult,
    ReasonCount,
    ReassignmentRequestedV1,
    SalesScorecard,
    ScorecardIssuedV1,
    ScoreContribution,
    ShadowDecisionV1,
    SlaArmedV1,
    SlaBreachedV1,
    SlaCancelledV1,
    SlaEscalatedV1,
    SlaMetV1,
    SlaWarnedV1,
    SourceFigures,
    Stage,
    Tier,
    utc_iso,
)

AT = datetime(2026, 11, 2, 9, 0, 0, 123456, tzinfo=UTC)
LEAD = uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3")
CAUSE = uuid.UUID("11111111-2222-4333-8444-555555555555")
ASSIGNMENT = uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa")
DEADLINE = uuid.UUID("bbbbbbbb-cccc-4ddd-8eee-ffffffffffff")
ATTRIBUTES = LeadAttributes(
    email="jane@acme.io", first_name="Jane", title="VP Marketing", company_size=250, country="US", industry="software"
)
DUE = AT + timedelta(minutes=5)


def eid(name: str) -> uuid.UUID:
    return uuid.uuid5(LEAD, name)


SAMPLES: tuple[Event, ...] = (
    LeadReceivedV1(
        event_id=eid("received"),
        lead_id=LEAD,
        occurred_at=AT,
        source="hubspot",
        webhook_id="msg_2a9",
        external_id="contact-77",
        engagement=EngagementType.demo_request,
        attributes=ATTRIBUTES,
    ),
    ActivityRecordedV1(
        event_id=eid("activity"),
        lead_id=LEAD,
        occurred_at=AT,
        source="salesforce",
        webhook_id="msg_3b1",
        activity=ActivityType.won,
        rep_id="ava",
        reason="signed",
        amount=Decimal("12500.50"),
    ),
    ActivityAcceptedV1(
        event_id=eid("accepted"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11",
        caused_by=eid("activity"),
        source="salesforce",
        activity=ActivityType.won,
        rep_id="ava",
        amount=Decimal("12500.50"),
        from_stage=Stage.mql,
        to_stage=Stage.customer,
        skipped_stages=(Stage.sal, Stage.sql, Stage.opportunity),
    ),
    ActivityRefusedV1(
        event_id=eid("refused"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11",
        caused_by=eid("activity"),
        source="salesforce",
        activity=ActivityType.sal_rejected,
        rep_id="ava",
        reported_reason="meh",
        stage=Stage.mql,
        refusal="unknown_reason",
        reason="sal_rejected carries reason code 'meh', which the agreement does not define; allowed: spam",
    ),
    LeadScoredV1(
        event_id=eid("scored"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11-1",
        caused_by=CAUSE,
        fit=55.0,
        engagement=40.0,
        total=95.0,
        contributions=(
            ScoreContribution(rule_id="title-decision-maker", kind="fit", points=25, value=25),
            ScoreContribution(rule_id="engagement.demo_request", kind="engagement", points=40, value=40),
        ),
    ),
    LeadStageChangedV1(
        event_id=eid("stage"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11-1",
        caused_by=CAUSE,
        from_stage=Stage.lead,
        to_stage=Stage.mql,
        reason="fast lane demo_request",
    ),
    LeadQualifiedV1(
        event_id=eid("qualified"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11-1",
        caused_by=CAUSE,
        tier=Tier.hot,
        score=95.0,
        reason="fast lane demo_request",
        attributes=ATTRIBUTES,
        source="hubspot",
    ),
    LeadRoutedV1(
        event_id=eid("routed"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11-1",
        caused_by=CAUSE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        pool_id="north-america",
        rule_id="north-america",
        reason="rule north-america -> pool north-america, weighted rotation",
        tier=Tier.hot,
        routed_at=AT,
        follow_up_due_at=DUE,
        candidates=(
            CandidateVerdict(rep_id="ava", eligible=True, weight=2, current_before=0, current_after=-2),
            CandidateVerdict(
                rep_id="ben", eligible=False, excluded_because="away", weight=1, current_before=0, current_after=0
            ),
        ),
    ),
    SlaArmedV1(
        event_id=eid("armed"),
        lead_id=LEAD,
        occurred_at=AT,
        deadline_id=DEADLINE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        milestone="first_touch",
        tier=Tier.hot,
        due_at=DUE,
    ),
    SlaBreachedV1(
        event_id=eid("breached"),
        lead_id=LEAD,
        occurred_at=DUE,
        deadline_id=DEADLINE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        milestone="first_touch",
        tier=Tier.hot,
        due_at=DUE,
        fired_at=DUE,
    ),
    SlaMetV1(
        event_id=eid("met"),
        lead_id=LEAD,
        occurred_at=AT,
        deadline_id=DEADLINE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        milestone="first_touch",
        tier=Tier.hot,
        due_at=DUE,
        responded_at=AT + timedelta(minutes=2),
        response_activity_id=eid("activity"),
    ),
    ReassignmentRequestedV1(
        event_id=eid("reassign"),
        lead_id=LEAD,
        occurred_at=DUE,
        assignment_id=ASSIGNMENT,
        tier=Tier.hot,
        exclude_reps=("ava", "ben"),
        reason="first touch breached",
        requested_by="sla_escalation",
    ),
    SlaWarnedV1(
        event_id=eid("warned"),
        lead_id=LEAD,
        occurred_at=AT + timedelta(minutes=4),
        deadline_id=DEADLINE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        team="general",
        milestone="first_touch",
        tier=Tier.hot,
        due_at=DUE,
        fraction=0.8,
        warn_at=AT + timedelta(minutes=4),
    ),
    SlaEscalatedV1(
        event_id=eid("escalated"),
        lead_id=LEAD,
        occurred_at=DUE,
        deadline_id=DEADLINE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        team="general",
        milestone="first_touch",
        tier=Tier.hot,
        due_at=DUE,
        step=EscalationAction.notify_manager,
        step_index=1,
        target="maria",
        escalate_at=DUE,
    ),
    SlaCancelledV1(
        event_id=eid("cancelled"),
        lead_id=LEAD,
        occurred_at=DUE,
        deadline_id=DEADLINE,
        assignment_id=ASSIGNMENT,
        rep_id="ava",
        milestone="first_touch",
        tier=Tier.hot,
        due_at=DUE,
        superseded_by=CAUSE,
    ),
    MqlPacingAlertV1(
        event_id=eid("pacing"),
        lead_id=uuid.uuid5(LEAD, "mql-pacing:month"),
        occurred_at=AT,
        target_id="month",
        period="month",
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, tzinfo=UTC),
        target=400,
        expected=13.3,
        actual=6,
        pacing=0.45,
        threshold=0.8,
    ),
    LeadUnassignedV1(
        event_id=eid("unassigned"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.11-1",
        caused_by=CAUSE,
        tier=Tier.hot,
        pool_id="inbound-queue",
        rule_id="north-america",
        reason="rule north-america -> pool north-america: nobody eligible; fallback pool inbound-queue: nobody eligible",
        candidates=(
            CandidateVerdict(
                rep_id="eli",
                eligible=False,
                excluded_because="paused",
                weight=1,
                current_before=0,
                current_after=0,
                pool_id="inbound-queue",
            ),
        ),
    ),
    ShadowDecisionV1(
        event_id=eid("shadow"),
        lead_id=LEAD,
        occurred_at=AT,
        agreement_version="2026.12-candidate",
        caused_by=CAUSE,
        kind="routed",
        rep_id="ava",
        pool_id="north-america",
        due_at=AT,
    ),
    ScorecardIssuedV1(
        event_id=eid("scorecard"),
        lead_id=uuid.uuid5(LEAD, "scorecard:week"),
        occurred_at=AT,
        cadence="week",
        period="2026-W44",
        period_start=datetime(2026, 10, 26, tzinfo=UTC),
        period_end=datetime(2026, 11, 2, tzinfo=UTC),
        timezone="UTC",
        agreement_version="2026.11-1",
        sales=SalesScorecard(
            verdict="missed",
            attainment_target=0.9,
            overall=Attainment(key="overall", met=3, breached=1, attainment=0.75),
            by_rep=(Attainment(key="ava", met=3, breached=1, attainment=0.75),),
            by_team=(Attainment(key="north-america", met=3, breached=1, attainment=0.75),),
            by_tier=(Attainment(key="hot", met=3, breached=1, attainment=0.75),),
            breaches=1,
            routed=4,
            untouched=1,
            system_seconds=LatencyPercentiles(count=4, p50=0.02, p90=0.05, p95=0.06, p99=0.07),
            human_seconds=LatencyPercentiles(count=3, p50=60.0, p90=240.0, p95=270.0, p99=294.0),
            sal_accepted=2,
            sal_rejected=1,
            rejection_reasons=(ReasonCount(reason="no-budget", count=1),),
        ),
        marketing=MarketingScorecard(
            verdict="met",
            leads=10,
            mqls=4,
            targets=(
                MqlTargetResult(
                    target_id="week", period="week", target=3, expected=3.0, actual=4, attainment=1.3333, met=True
                ),
            ),
            by_source=(SourceFigures(source="webform", leads=10, mqls=4),),
        ),
    ),
    AdminActionAuditedV1(
        event_id=eid("audit"),
        lead_id=AUDIT_KEY,
        occurred_at=AT,
        token="roster-bot",
        action="rep.change",
        target="ava",
        outcome="done",
        detail={"fields": "capacity"},
    ),
    LeadErasedV1(event_id=eid("erased"), lead_id=LEAD, occurred_at=AT, aliases=(eid("alias"),), rows_changed=7),
    LeadMergedV1(
        event_id=eid("merged"),
        lead_id=LEAD,
        occurred_at=AT,
        caused_by=eid("received"),
        alias_lead_id=eid("alias"),
        rule="source id already known",
        source="hubspot",
        external_id="hs-1",
        email="ana@example.com",
    ),
)
RECEIVED = SAMPLES[0]


def test_one_sample_for_every_event_type() -> None:
    missing = [event.__name__ for event in ALL_EVENTS if event not in {type(sample) for sample in SAMPLES}]
    assert not missing, f"add a sample for {missing}"
    assert len(SAMPLES) == len(ALL_EVENTS)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    record = encode(event)

    assert record.topic == type(event).topic
    assert decode(record.topic, record.value, record.headers, (type(event),)) == event
    assert decode(record.topic, record.value, record.headers, ALL_EVENTS) == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_cloudevents_headers(event: Event) -> None:
    record = encode(event, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    headers = dict(record.headers)

    assert len(headers) == len(record.headers), "no header appears twice"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == str(event.event_id).encode()
    assert headers["ce_type"] == type(event).ce_type.encode()
    assert headers["ce_source"] == type(event).ce_source.encode()
    assert headers["ce_subject"] == str(event.lead_id).encode()
    assert headers["ce_time"] == utc_iso(event.occurred_at).encode()
    assert headers["ce_time"].endswith(b"Z")
    assert headers["content-type"] == b"application/json"
    assert headers["traceparent"] == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert record.key == str(event.lead_id).encode()


def test_ce_time_is_utc_with_a_z_suffix() -> None:
    assert header(encode(RECEIVED).headers, "ce_time") == "2026-11-02T09:00:00.123456Z"


def test_traceparent_is_only_sent_when_given() -> None:
    assert header(encode(RECEIVED).headers, "traceparent") is None


def test_every_topic_has_one_event_type() -> None:
    assert {event.topic for event in ALL_EVENTS} == set(EVENTS_BY_TOPIC)
    assert len(EVENTS_BY_TOPIC) == len(ALL_EVENTS)


# --------------------------------------------------------------------------- decode errors

RECORD = encode(RECEIVED)
TOPIC = RECORD.topic
EXPECTED = (LeadReceivedV1,)


def without(headers: Headers, name: str) -> Headers:
    return tuple((key, value) for key, value in headers if key != name)


def replaced(headers: Headers, name: str, value: bytes) -> Headers:
    return (*without(headers, name), (name, value))


def decode_error(value: bytes | None, headers: Headers = RECORD.headers) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(TOPIC, value, headers, EXPECTED)
    return str(caught.value)


def test_tombstone() -> None:
    assert decode_error(None) == "record has no value (tombstone); expected a JSON event"


def test_oversize_value() -> None:
    message = decode_error(b" " * (MAX_RECORD_BYTES + 1))

    assert message == f"record value is {MAX_RECORD_BYTES + 1} bytes; the limit is {MAX_RECORD_BYTES}"


def test_missing_ce_type() -> None:
    message = decode_error(RECORD.value, without(RECORD.headers, "ce_type"))

    assert message == "missing ce_type header; every record must carry its CloudEvents type"


def test_wrong_ce_type_for_the_topic() -> None:
    message = decode_error(RECORD.value, replaced(RECORD.headers, "ce_type", LeadRoutedV1.ce_type.encode()))

    assert message == (
        "ce_type 'io.coxswain.lead.routed.v1' is not accepted on leads.received.v1; "
        "allowed: io.coxswain.lead.received.v1"
    )


def test_unknown_ce_type() -> None:
    message = decode_error(RECORD.value, replaced(RECORD.headers, "ce_type", b"com.example.nope"))

    assert message.startswith("ce_type 'com.example.nope' is not accepted on leads.received.v1")


def test_invalid_json() -> None:
    assert decode_error(b'{"event_id": ').startswith("value is not valid JSON:")


def test_schema_mismatch_names_the_fields() -> None:
    document = orjson.loads(RECORD.value)
    document["engagement"] = "telepathy"
    del document["source"]

    message = decode_error(orjson.dumps(document))

    assert message.startswith("value does not match LeadReceivedV1:")
    assert "engagement: Input should be" in message
    assert "source: Field required" in message


def test_schema_mismatch_on_a_json_array() -> None:
    assert decode_error(b"[1, 2]").startswith("value does not match LeadReceivedV1: (root): Input should be")


def test_ce_id_mismatch() -> None:
    other = "00000000-0000-4000-8000-000000000000"

    message = decode_error(RECORD.value, replaced(RECORD.headers, "ce_id", other.encode()))

    assert message == f"ce_id header '{other}' differs from event_id {RECEIVED.event_id}"


def test_missing_ce_id_is_tolerated() -> None:
    assert decode(TOPIC, RECORD.value, without(RECORD.headers, "ce_id"), EXPECTED) == RECEIVED


# --------------------------------------------------------------------------- fuzzing

HEADER_NAMES = ["ce_type", "ce_id", "ce_source", "ce_subject", "content-type", "traceparent", "x"]
header_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([event.ce_type.encode() for event in ALL_EVENTS]),
    st.sampled_from([str(event.event_id).encode() for event in SAMPLES]),
)
random_headers = st.lists(
    st.tuples(st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=10)), header_values), max_size=6
).map(tuple)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _mangled_sample(data: st.DataObject) -> tuple[str, bytes, Headers]:
    """A real record of some event type with a few bytes cut or inserted, and its own or random headers."""
    record = encode(data.draw(st.sampled_from(SAMPLES), label="sample"))
    value = record.value
    at = data.draw(st.integers(min_value=0, max_value=len(value)), label="at")
    cut = data.draw(st.integers(min_value=0, max_value=8), label="cut")
    value = value[:at] + data.draw(st.binary(max_size=4), label="insert") + value[at + cut :]
    headers = data.draw(st.one_of(st.just(record.headers), random_headers), label="headers")
    return record.topic, value, headers


def _decode_or_decode_error(topic: str, value: bytes | None, headers: Headers) -> None:
    try:
        event = decode(topic, value, headers, ALL_EVENTS)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert isinstance(event, ALL_EVENTS)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=200)), headers=random_headers, topic=st.text(max_size=20))
def test_random_bytes_and_headers_only_raise_decode_error(value: bytes | None, headers: Headers, topic: str) -> None:
    _decode_or_decode_error(topic, value, headers)


@settings(max_examples=200, deadline=None)
@given(document=json_values, headers=random_headers)
def test_random_json_only_raises_decode_error(document: object, headers: Headers) -> None:
    _decode_or_decode_error(TOPIC, orjson.dumps(document), headers)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mangled_records_only_raise_decode_error(data: st.DataObject) -> None:
    _decode_or_decode_error(*_mangled_sample(data))
