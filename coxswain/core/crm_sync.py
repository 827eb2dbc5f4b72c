"""CRM write-back decided as data: which writes a routing fact asks of a CRM (no I/O).

``coxswain run crm-sync`` (services/crm_sync) consumes the facts that set or change a lead's
owner and carries out the writes this module decides, one connection per CRM:

- ``leads.routed.v1``: the contact gets the rep's CRM owner id (:class:`SetOwner`) and the rep
  gets a task due at the first-touch deadline with the playbook and the routing reason
  (:class:`CreateTask`). The task's idempotency key is the assignment id: one task per
  assignment, however often the fact is delivered.
- a routed fact with ``replaces_assignment_id`` (a reassignment) first closes the task of the
  assignment it replaces (:class:`CloseTask`), so the lead keeps exactly one open task.
- ``leads.stage_changed.v1`` to ``recycled`` or ``disqualified``: the lead is released, its open
  task is closed (:class:`CloseOpenTask`; the shell knows which task is open).
- ``leads.merged.v1``: a provisional id (and the email it came with) turned out to be this
  lead. A record the CRM holds for that email gets the lead's owner (:class:`SetAliasOwner`),
  at once if the lead has one here, else with its routed fact, which covers every email the
  lead is known by. So a lead first known by its provisional id ends with the canonical lead's
  owner, in whichever order the two facts arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from coxswain.core.agreement import Agreement
from coxswain.core.identity import normalise_email
from coxswain.core.roster import Roster
from schemas.events import LeadMergedV1, LeadRoutedV1, LeadStageChangedV1, Stage

CrmKind = Literal["hubspot", "salesforce"]

# Where the roster keeps a rep's id in each CRM (``roster[].crm.<field>``), and what that CRM calls it.
ROSTER_FIELD: dict[CrmKind, str] = {"hubspot": "hubspot_owner_id", "salesforce": "salesforce_user_id"}
ID_NAME: dict[CrmKind, str] = {"hubspot": "owner id", "salesforce": "user id"}
# Salesforce requires LastName and Company on a Lead; web-to-lead fills a missing one with this.
NOT_PROVIDED = "[not provided]"

# Stages that end a rep's work on a lead without a hand-over to another rep.
RELEASING_STAGES = frozenset({Stage.recycled, Stage.disqualified})
SUBJECT_MAX = 256
BODY_MAX = 60_000


class UnmappedRep(LookupError):
    """A rep has no owner id in the CRM: the write cannot name an owner (the record is dead-lettered)."""


@dataclass(frozen=True)
class CloseTask:
    """Close the task created for ``assignment_id`` (if any is still open)."""

    assignment_id: uuid.UUID
    reason: str


@dataclass(frozen=True)
class CloseOpenTask:
    """Close whatever task of the lead is still open (the shell looks it up)."""

    lead_id: uuid.UUID
    reason: str


@dataclass(frozen=True)
class SetOwner:
    """Find or create the contact (HubSpot) or Lead (Salesforce) and set its owner.

    HubSpot finds the contact by email. Salesforce finds the Lead by email, or by the Coxswain
    lead id in an external-id field when one is configured; a Lead it creates needs a last name
    and a company (``[not provided]`` when the lead has none, as Salesforce's web-to-lead does)."""

    email: str
    owner_id: str
    lead_id: uuid.UUID | None = None
    last_name: str = NOT_PROVIDED
    company: str = NOT_PROVIDED


@dataclass(frozen=True)
class CreateTask:
    """One task per assignment: looked up by ``assignment_id`` before it is created."""

    assignment_id: uuid.UUID
    owner_id: str
    due_at: datetime
    subject: str
    body: str


@dataclass(frozen=True)
class SetAliasOwner:
    """Give the record found by an alias's email (a contact or Lead made for an identity that
    turned out to be this lead, ``leads.merged.v1``) the lead's owner. Only a record that exists
    is changed: nothing is created for an alias."""

    email: str
    owner_id: str


CrmWrite = CloseTask | CloseOpenTask | SetOwner | SetAliasOwner | CreateTask


def owner_ids(agreement: Agreement, kind: CrmKind) -> dict[str, str]:
    """rep id -> the rep's owner id in ``kind``, for every rep that has one."""
    ids: dict[str, str] = {}
    for rep in agreement.roster:
        owner = getattr(rep.crm, ROSTER_FIELD[kind])
        if owner is not None:
            ids[rep.id] = owner
    return ids


def roster_owner_ids(roster: Roster, kind: CrmKind) -> dict[str, str]:
    """``owner_ids`` with the roster API's changes on top: a rep added at runtime, or one whose
    ids were changed there, is written with the ids in force now."""
    ids: dict[str, str] = {}
    for rep in roster.reps.values():
        owner = getattr(rep.crm, ROSTER_FIELD[kind])
        if owner is not None and rep.problem is None:
            ids[rep.id] = owner
    return ids


def unmapped_reps(agreement: Agreement, kind: CrmKind) -> list[str]:
    """Reps who can be routed to but have no owner id in ``kind``.

    Every rep of the roster counts: pools name reps, and the roster API can make any rep of the
    roster an account's owner, who then gets that account's leads."""
    mapped = owner_ids(agreement, kind)
    return [rep.id for rep in agreement.roster if rep.id not in mapped]


def unmapped_message(rep_id: str, kind: CrmKind) -> str:
    return f"rep {rep_id!r} has no {kind} {ID_NAME[kind]} (roster: crm.{ROSTER_FIELD[kind]})"


def plan_routed(
    fact: LeadRoutedV1,
    owners: Mapping[str, str],
    email: str,
    kind: CrmKind,
    attributes: Mapping[str, object] | None = None,
    alias_emails: Sequence[str] = (),
) -> tuple[CrmWrite, ...]:
    """The writes a routed fact asks for, in order: close the replaced task, set the owner (of the
    lead's record and of any record made for one of its aliases), add the task.

    ``attributes`` are the lead's (``leads.attributes``): the name and company a new Salesforce
    Lead is created with. ``alias_emails`` are the other emails the lead is known by."""
    owner = owners.get(fact.rep_id)
    if owner is None:
        raise UnmappedRep(unmapped_message(fact.rep_id, kind))
    writes: list[CrmWrite] = []
    if fact.replaces_assignment_id is not None:
        writes.append(CloseTask(fact.replaces_assignment_id, f"reassigned to {fact.rep_id}: {fact.reason}"))
    attributes = attributes or {}
    writes.append(
        SetOwner(
            email,
            owner,
            lead_id=fact.lead_id,
            last_name=_text(attributes.get("last_name")) or _text(attributes.get("first_name")) or NOT_PROVIDED,
            company=_text(attributes.get("company")) or NOT_PROVIDED,
        )
    )
    writes.extend(SetAliasOwner(alias, owner) for alias in other_emails(email, alias_emails))
    writes.append(
        CreateTask(
            assignment_id=fact.assignment_id,
            owner_id=owner,
            due_at=fact.follow_up_due_at,
            subject=task_subject(fact),
            body=task_body(fact),
        )
    )
    return tuple(writes)


def plan_merged(fact: LeadMergedV1, owner_id: str | None, email: str | None) -> tuple[CrmWrite, ...]:
    """An alias merged into a lead that already has an owner here (``owner_id``, from the
    assignment last written): the record made for the alias's email gets that owner. A lead not
    written yet needs nothing now: its routed fact covers every email it is known by then."""
    if owner_id is None or fact.email is None:
        return ()
    return tuple(SetAliasOwner(alias, owner_id) for alias in other_emails(email, [fact.email]))


def other_emails(email: str | None, emails: Sequence[str]) -> list[str]:
    """``emails`` but ``email``, each once, compared as identity resolution compares them."""
    seen = {normalise_email(email)} if email else set()
    found = []
    for candidate in emails:
        key = normalise_email(candidate)
        if key and key not in seen:
            seen.add(key)
            found.append(candidate)
    return found


def plan_stage_changed(fact: LeadStageChangedV1) -> tuple[CrmWrite, ...]:
    """A lead recycled or disqualified is released: its open task is closed. Other stages: nothing."""
    if fact.to_stage not in RELEASING_STAGES:
        return ()
    return (CloseOpenTask(fact.lead_id, f"{fact.to_stage.value}: {fact.reason}"),)


def _text(value: object) -> str | None:
    return value.strip()[:80] or None if isinstance(value, str) else None


def task_subject(fact: LeadRoutedV1) -> str:
    playbook = f" ({fact.playbook.id})" if fact.playbook is not None else ""
    return f"Follow up: {fact.tier.value} lead{playbook}"[:SUBJECT_MAX]


def task_body(fact: LeadRoutedV1) -> str:
    """What the rep needs in the task: why they got the lead, and what to send and say."""
    lines = [f"Routed by Coxswain: {fact.reason}", f"Follow up by {fact.follow_up_due_at.isoformat()}."]
    if fact.playbook is not None:
        lines += ["", f"Playbook {fact.playbook.id}", f"Talk track: {fact.playbook.talk_track}"]
        lines += [f"- {item.title}: {item.url}" for item in fact.playbook.content]
    lines += ["", f"Assignment {fact.assignment_id}"]
    return "\n".join(lines)[:BODY_MAX]
