"""The demo's local HubSpot signs its webhooks as HubSpot does (intake's verifier accepts them),
and the scripted reps split their first touches between the local CRMs and intake."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from coxswain.demo_crm.hubspot import sign
from coxswain_app.demo import CrmLinks
from services.intake.adapters.hubspot import verify_v3
from services.intake.signatures import SignatureRejected

URL = "http://127.0.0.1:8080/v1/webhooks/hubspot/hubspot/crm-events"
NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def test_the_local_hubspots_webhook_signature_is_accepted_by_intake_and_a_changed_body_is_not() -> None:
    body = b'[{"eventId": 1, "objectTypeId": "0-48", "objectId": 1001}]'
    headers = httpx.Headers(sign("client-secret", "POST", URL, body, int(NOW.timestamp() * 1000)))

    verify_v3(headers, "POST", URL, body, ["client-secret"], NOW, timedelta(minutes=5))
    with pytest.raises(SignatureRejected):
        verify_v3(headers, "POST", URL, body.replace(b"1001", b"1002"), ["client-secret"], NOW, timedelta(minutes=5))
    with pytest.raises(SignatureRejected):
        verify_v3(headers, "POST", URL, body, ["another-secret"], NOW, timedelta(minutes=5))


def test_first_touches_are_split_between_the_crms_and_intake_for_reps_known_there() -> None:
    links = CrmLinks("token", "http://hubspot", "http://salesforce", 0.35, {"ava": "71001"}, {"ava": "005Dm0000001AVA"})
    rng = random.Random(1)

    split = Counter(links.choose(rng, "ava") for _ in range(3000))
    assert set(split) == {"hubspot", "salesforce", "intake"}
    assert all(900 < split[via] < 1200 for via in ("hubspot", "salesforce")), split
    assert {links.choose(rng, "ben") for _ in range(100)} == {"intake"}, "a rep the CRMs do not know"
    only_hubspot = CrmLinks("token", "http://hubspot", None, 0.35, {"ava": "71001"}, {"ava": "005Dm0000001AVA"})
    assert {only_hubspot.choose(rng, "ava") for _ in range(300)} == {"hubspot", "intake"}
