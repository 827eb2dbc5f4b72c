"""The live shells' logic, in process and in memory, over the same pure core calls.

One ``Engine`` per agreement replays a sequence of intake events (``LeadReceivedV1`` and
``ActivityRecordedV1``, in received order) the way the scoring, router and SLA shells would:

- scoring: identity resolution (``coxswain.core.identity.resolve``), ``on_received`` /
  ``on_activity`` at the event's time (``evaluation_time``), and one re-evaluation timer per
  lead at ``next_reevaluation``, kept in a heap and fired (``on_timer``) in time order before
  any input dated at or after it. Timers are armed at a cheap bound (``reevaluation_bound``) and
  the exact moment is searched for only when the bound is reached, which most leads never do
  (a new input re-arms them first); the order of firing is the same;
- routing: the router's own core transitions (``coxswain.core.routing_state``): ``decide``
  against the rotations, rep loads, accounts, the lead's holder and its domain's open leads,
  ``assign`` to apply a decision and build its fact, ``release`` on ``releases``'s rules (a
  releasing activity or stage change dated no earlier than the assignment);
- SLA: each assignment's first-touch clock goes through the monitor's own core transitions
  (``coxswain.core.sla_clocks``): superseded (cancelled if armed) by the next assignment, which
  carries on its ladder and its count of reassignments; met when a response counted by the
  agreement and credited by ``sla.credit`` arrives by the deadline, breached otherwise.

Processing is instantaneous in simulation: a lead is routed at the time of the fact that
qualified it (live routing happens when the router processes that fact, a few milliseconds
later). Parked leads (nobody eligible) are retried once per simulated minute, as the live
retry loop does on its interval. CRM activities are judged once (``on_activity``): a refused one
is counted and changes nothing, an accepted one releases load and stops the owner's clock as
``sla.credit`` says. Escalation ladders run as the SLA monitor runs them: the breach and each step
at its time (``on_timer``, ``timer_facts``), a reassignment routed again excluding the last
owners, the pending steps carried on to the new assignment, the cap, one page per follow-up.
Not modelled: warnings (they change nothing), the ``sal_decision`` milestone and roster
overrides made through the roster API.
"""

from __future__ import annotations

import functools
import heapq
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from coxswain.core import routing_state, sla_clocks
from coxswain.core.accounts import lead_domain
from coxswain.core.agreement import Agreement
from coxswain.core.capacity import RepLoad
from coxswain.core.identity import alias_key, identity_keys, resolve
from coxswain.core.lead import (
    LeadState,
    Outcome,
    evaluation_time,
    next_reevaluation,
    on_activity,
    on_received,
    on_timer,
    reevaluation_bound,
    timer_id_for,
)
from coxswain.core.lifecycle import LifecycleRefused
from coxswain.core.roster import Roster, build_roster
from coxswain.core.routing import Rotation, RoutingInput, select_pool
from coxswain.core.routing_state import DomainLeads, Holder, RouteRequest, RoutingState
from coxswain.core.sla import (
    FIRST_TOUCH,
    Clock,
    DeadlineStatus,
    MilestonePlan,
    Timer,
    TimerKind,
)
from coxswain.core.sla import on_timer as on_sla_timer
from coxswain.core.sla_clocks import HeldClock
from schemas.events import (
    ActivityAcceptedV1,
    ActivityRecordedV1,
    ActivityRefusedV1,
    Event,
    LeadQualifiedV1,
    LeadReceivedV1,
    LeadStageChangedV1,
    ReassignmentRequestedV1,
    SlaEscalatedV1,
    Stage,
    Tier,
)

Input = LeadReceivedV1 | ActivityRecordedV1

RETRY_EVERY = timedelta(minutes=1)
REASSIGNMENT_RETRY_EVERY = timedelta(hours=1)
REASSIGNMENT_RETRY_MAX = timedelta(days=1)
# Ties at one instant, as the live timer loop orders them: the breach before its ladder.
_TIMER_RANK = {TimerKind.warning: 0, TimerKind.breach: 1, TimerKind.escalation: 2}
_STATUS = {status.value: status for status in DeadlineStatus}


@dataclass(frozen=True)
class StageChange:
    lead_id: uuid.UUID
    at: datetime
    from_stage: Stage
    to_stage: Stage
    caused_by: uuid.UUID
    source: str


@dataclass
class Assignment:
    lead_id: uuid.UUID
    at: datetime
    rep_id: str
    pool_id: str
    rule_id: str
    matched_by: str
    tier: Tier
    source: str
    due: datetime
    decision_key: uuid.UUID
    reason: str = ""  # the decision's reason, as leads.routed.v1 carries it
    sla: str = "armed"  # armed, met, breached, cancelled
    responded_at: datetime | None = None
    responded_by: str | None = None  # the rep credited with the response (sla.credit)
    # The follow-up's escalation (policies with a ladder only): its pending timers, reassignments
    # made so far, whether on-call was paged, and whether a newer assignment superseded it.
    pending: list[Timer] = field(default_factory=list)
    reassignments: int = 0
    paged: bool = False
    superseded: bool = False

    @property
    def assignment_id(self) -> uuid.UUID:
        return uuid.uuid5(self.decision_key, "assignment")  # as routing_state.assign derives it

    @property
    def escalating(self) -> bool:
        return self.sla == "breached" and self.responded_at is None and not self.superseded


@dataclass(frozen=True)
class Escalation:
    """A ladder step that fired (``sla.escalated.v1``), with the step it became (a reassign
    past the cap pages)."""

    lead_id: uuid.UUID
    at: datetime
    rep_id: str
    step: str
    step_index: int


@dataclass(frozen=True)
class _Request:
    """What routing is asked: a qualified lead, or a reassignment that must skip some reps and
    replaces an assignment; ``asked`` is the live router's ``RouteRequest`` for it."""

    fact: LeadQualifiedV1
    exclude: tuple[str, ...] = ()
    replaces: Assignment | None = None

    @functools.cached_property
    def asked(self) -> RouteRequest:
        fact = self.fact
        return RouteRequest(
            kind="qualified" if self.replaces is None else "reassignment",
            decision_key=fact.event_id,
            lead_id=fact.lead_id,
            attributes=fact.attributes,
            tier=fact.tier,
            source=fact.source,
            persona=fact.persona,
            playbook=fact.playbook,
            exclude=self.exclude,
            replaces_assignment_id=None if self.replaces is None else self.replaces.assignment_id,
        )


@dataclass
class Results:
    agreement_version: str
    stage_changes: list[StageChange] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)
    parked: int = 0
    rejected: list[str] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    inputs: int = 0
    leads: int = 0
    first_input: datetime | None = None
    last_input: datetime | None = None


class Engine:
    def __init__(
        self,
        agreement: Agreement,
        roster: Roster | None = None,
        accounts: Mapping[str, str] | None = None,
    ) -> None:
        self.agreement = agreement
        self.roster = roster or build_roster(agreement)
        self.accounts = dict(accounts or {})
        self.results = Results(agreement.version)
        self.states: dict[uuid.UUID, LeadState] = {}
        self.identities: dict[str, uuid.UUID] = {}
        self._keys: dict[tuple[str | None, str, str | None], tuple[str, ...]] = {}
        # lead -> (due, sequence number of the arming); the heap holds (due, sequence, lead). A timer
        # armed at a bound (``_arm``) is also in ``_bounded``, with the moment it was armed at.
        self.timers: dict[uuid.UUID, tuple[datetime, int]] = {}
        self._bounded: dict[uuid.UUID, datetime] = {}
        self._bounds: dict[uuid.UUID, tuple[LeadState, datetime, datetime | None]] = {}
        self._heap: list[tuple[datetime, int, uuid.UUID]] = []
        self._seq = 0
        # The router's state (coxswain.core.routing_state), kept whole here; each decision is
        # given a view of it (``_view``) and what the core returns is written back (``_keep``).
        self.rotations: Mapping[str, Rotation] = {}
        self.loads: Mapping[str, RepLoad] = {}
        self.holders: dict[uuid.UUID, Holder] = {}
        self.open_by_domain: dict[str, DomainLeads] = {}
        self.current: dict[uuid.UUID, Assignment] = {}  # each lead's latest assignment
        self.parked: dict[uuid.UUID, _Request] = {}  # qualified leads nobody could take yet
        self.parked_reassignments: dict[uuid.UUID, _Request] = {}
        # SLA ladders: (due, rank, sequence, assignment, timer), fired in time order; a timer no
        # longer in its assignment's ``pending`` was retired or carried on.
        self._sla_heap: list[tuple[datetime, int, int, Assignment, Timer]] = []
        self._qualified: dict[uuid.UUID, LeadQualifiedV1] = {}  # what a reassignment routes again
        # Parked reassignments by lead (``_retry_reassignments``): who each waits for, which were
        # freed by a release since, and when each is tried anyway (a heap, with its back-off).
        self._waiting_on: dict[str, set[uuid.UUID]] = {}
        self._freed: set[uuid.UUID] = set()
        self._backoff: dict[uuid.UUID, timedelta] = {}
        self._retry_heap: list[tuple[datetime, int, uuid.UUID]] = []
        self._last_retry: datetime | None = None
        self.clock: datetime | None = None

    # ------------------------------------------------------------------ input

    def feed(self, event: Input) -> None:
        results = self.results
        results.inputs += 1
        at = event.occurred_at
        if results.first_input is None or at < results.first_input:
            results.first_input = at
        if results.last_input is None or at > results.last_input:
            results.last_input = at
        self.advance(at)
        try:
            if isinstance(event, LeadReceivedV1):
                self._received(event)
            else:
                self._activity(event)
        except (LifecycleRefused, ValueError, KeyError, LookupError) as exc:
            results.rejected.append(f"{type(event).__name__} {event.event_id}: {exc}")

    def run(self, events: Iterable[Input], until: datetime | None = None) -> Results:
        for event in events:
            self.feed(event)
        self.finish(until)
        return self.results

    def advance(self, now: datetime) -> None:
        """Fire every re-evaluation due by ``now``, oldest first; retry parked leads."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, seq, lead_id = heapq.heappop(heap)
            if self.timers.get(lead_id) != (due, seq):
                continue  # replaced or removed since it was armed
            armed_at = self._bounded.pop(lead_id, None)
            if armed_at is not None:
                # The bound is reached with no new input for the lead: now find the exact moment.
                # It keeps its sequence number, so timers due at the same instant fire in the order
                # they were armed, as if the exact moment had been known from the start.
                exact = next_reevaluation(self.states[lead_id], self.agreement, armed_at)
                if exact is None:
                    del self.timers[lead_id]
                else:
                    self.timers[lead_id] = (exact, seq)
                    heapq.heappush(heap, (exact, seq, lead_id))
                continue
            del self.timers[lead_id]
            self._fire(lead_id, due)
        sla_heap = self._sla_heap
        while sla_heap and sla_heap[0][0] <= now:
            _, _, _, assignment, timer = heapq.heappop(sla_heap)
            if timer in assignment.pending:
                assignment.pending.remove(timer)
                self._fire_sla(assignment, timer)
        if self.clock is None or now > self.clock:
            self.clock = now
        waiting = self.parked or self.parked_reassignments
        if waiting and (self._last_retry is None or now - self._last_retry >= RETRY_EVERY):
            self._last_retry = now
            for request in list(self.parked.values()):
                self._route(request, now)
            if self.parked_reassignments:
                self._retry_reassignments(now)

    def finish(self, until: datetime | None = None) -> None:
        """Fire the timers due by ``until`` (default: the last input) and decide SLA clocks."""
        end = until or self.results.last_input
        if end is None:
            return
        self.advance(end)
        for assignment in self.results.assignments:
            if assignment.sla == "armed" and assignment.due <= end:
                assignment.sla = "breached"
        self.results.leads = len(self.states)
        self.results.parked = len(self.parked) + len(self.parked_reassignments)

    # ------------------------------------------------------------------ scoring

    def _received(self, event: LeadReceivedV1) -> None:
        contact = (event.attributes.email, event.source, event.external_id)
        keys = self._keys.get(contact)
        if keys is None:
            keys = self._keys[contact] = identity_keys(*contact)
        lead_id = event.lead_id
        identities = self.identities
        # A person known by every key under this very id needs no resolution: resolve would keep
        # the id and record nothing.
        if keys and not (identities.get(keys[0]) == lead_id and all(key in identities for key in keys[1:])):
            wanted = (*keys, alias_key(event.lead_id))
            known = {key: identities[key] for key in wanted if key in identities}
            resolution = resolve(keys, known, event.lead_id)
            for key in resolution.record:
                identities.setdefault(key, resolution.lead_id)
            lead_id = resolution.lead_id
        state = self.states.get(lead_id) or LeadState(lead_id=lead_id)
        at = evaluation_time(state, event.occurred_at)
        self._scored(on_received(state, event, self.agreement, at, score_fact=False), at)

    def _activity(self, event: ActivityRecordedV1) -> None:
        lead_id = self.identities.get(alias_key(event.lead_id), event.lead_id)
        state = self.states.get(lead_id)
        if state is None:
            raise LookupError(f"activity {event.activity.value} for lead {event.lead_id}, which scoring has never seen")
        # Judged once, as scoring judges it; the router and the SLA monitor act on the judgement.
        outcome = on_activity(state, event, self.agreement, event.occurred_at)
        judgement = outcome.facts[0]
        if isinstance(judgement, ActivityRefusedV1):
            self.results.rejected.append(f"ActivityRecordedV1 {event.event_id}: {judgement.reason}")
            return
        assert isinstance(judgement, ActivityAcceptedV1)
        if routing_state.releases(judgement):
            self._release(lead_id, judgement.occurred_at)
        self._respond(judgement)
        self._scored(outcome, evaluation_time(outcome.state, event.occurred_at))

    def _scored(self, outcome: Outcome, at: datetime) -> None:
        state = outcome.state
        self.states[state.lead_id] = state
        self._facts(outcome.facts)
        self._arm(state, at)

    def _arm(self, state: LeadState, at: datetime) -> None:
        """Arm at a bound no later than ``next_reevaluation``, found without its search. Most leads
        get a new input (and a new timer) before the bound; the rest get the exact moment then."""
        lead_id = state.lead_id
        last = self._bounds.get(lead_id)
        if last is not None and last[0] is state and last[1] <= at:
            # Unchanged since its last bound (an activity that moves nothing), asked again later:
            # the score does not cross before that bound, so neither does a search from now.
            bound = last[2] if last[2] is None else max(last[2], at)
        else:
            bound = reevaluation_bound(state, self.agreement, at)
            self._bounds[lead_id] = (state, at, bound)
        if bound is None:
            self.timers.pop(lead_id, None)
            self._bounded.pop(lead_id, None)
            return
        self._seq += 1
        self.timers[lead_id] = (bound, self._seq)
        self._bounded[lead_id] = at
        heapq.heappush(self._heap, (bound, self._seq, lead_id))

    def _fire(self, lead_id: uuid.UUID, due: datetime) -> None:
        # Every change of a lead's state re-arms its timer, so the state now is the one the timer
        # was armed for, and its id is the one the live scorer stored with the timer row.
        state = self.states[lead_id]
        outcome = on_timer(state, self.agreement, due, timer_id_for(state, due), score_fact=False)
        if outcome.facts:
            self.states[lead_id] = outcome.state
            self._facts(outcome.facts)
        again = next_reevaluation(outcome.state, self.agreement, due)
        if again is None or again <= due:
            return  # as the live timer loop: never spin
        self._seq += 1
        self.timers[lead_id] = (again, self._seq)
        heapq.heappush(self._heap, (again, self._seq, lead_id))

    def _facts(self, facts: Iterable[Event]) -> None:
        for fact in facts:
            if isinstance(fact, LeadStageChangedV1):
                state = self.states[fact.lead_id]
                self.results.stage_changes.append(
                    StageChange(
                        fact.lead_id, fact.occurred_at, fact.from_stage, fact.to_stage, fact.caused_by, state.source
                    )
                )
                if routing_state.releases(fact):
                    self._release(fact.lead_id, fact.occurred_at)
            elif isinstance(fact, LeadQualifiedV1):
                self._qualified[fact.lead_id] = fact
                self._route(_Request(fact), fact.occurred_at)

    # ------------------------------------------------------------------ routing

    def _view(self, lead_id: uuid.UUID, domain: str | None) -> RoutingState:
        """What one lead's decision reads, as the router loads it: the whole rotations, loads and
        accounts, the lead's holder, and the open leads of its domain and of its holder's."""
        holder = self.holders.get(lead_id)
        domains = {domain, holder.domain if holder is not None else None}
        return RoutingState(
            self.rotations,
            self.loads,
            self.accounts,
            {lead_id: holder} if holder is not None else {},
            {d: self.open_by_domain[d] for d in domains if d is not None and d in self.open_by_domain},
        )

    def _keep(self, state: RoutingState) -> None:
        self.rotations, self.loads = state.rotations, state.loads
        self.holders.update(state.holders)
        self.open_by_domain.update(state.open_by_domain)

    def _route(self, request: _Request, now: datetime) -> None:
        fact = request.fact
        agreement = self.agreement
        asked = request.asked
        view = self._view(fact.lead_id, lead_domain(fact.attributes, agreement.routing.ownership.free_mail_domains))
        decision = routing_state.decide(view, asked, agreement, self.roster, now, explain=False)
        if decision.rep_id is None:
            if request.replaces is not None:
                self._park_reassignment(request, now)
            elif fact.lead_id not in self.parked:
                self.parked[fact.lead_id] = request
            return
        self.parked.pop(fact.lead_id, None)
        self.parked_reassignments.pop(fact.lead_id, None)
        after, routed = routing_state.assign(view, asked, decision, agreement, now)
        held = view.holders.get(fact.lead_id)
        if held is not None and held.open:
            self._freed_by(held.rep_id)  # qualified again while still open: its load moved
        self._keep(after)
        previous = self.current.get(fact.lead_id)
        # The SLA side, as the monitor's core decides it for the lead's first-touch clock: the
        # previous clock is superseded (cancelled if armed), the new one continues its follow-up.
        before: HeldClock | None = None
        if previous is not None and not previous.superseded:
            clock = self._held(previous)
            if clock.can_change:
                before = clock
                superseded, _ = sla_clocks.supersede(clock, routed, now)
                self._kept(previous, superseded)
            previous.superseded = True
        escalation = bool(agreement.sla.policies[fact.tier].escalation)
        if escalation:
            first_touch = next(m for m in sla_clocks.routed_plan(agreement, routed) if m.milestone == FIRST_TOUCH)
        else:
            # No ladder: the breach is decided when the clock is next looked at (``finish``, a response).
            first_touch = MilestonePlan(FIRST_TOUCH, now, routed.follow_up_due_at, "", ())
        armed, _ = sla_clocks.new_clock(agreement, routed, first_touch, before, now)
        assignment = Assignment(
            lead_id=fact.lead_id,
            at=now,
            rep_id=routed.rep_id,
            pool_id=routed.pool_id,
            rule_id=routed.rule_id,
            matched_by=decision.matched_by,
            reason=routed.reason,
            tier=fact.tier,
            source=fact.source,
            due=routed.follow_up_due_at,
            decision_key=fact.event_id,
            reassignments=armed.clock.reassignments,
            paged=armed.clock.paged,
        )
        self.results.assignments.append(assignment)
        self.current[fact.lead_id] = assignment
        if escalation:
            # The breach and the ladder (its own, or the one carried on), as the live monitor arms
            # them; warnings change nothing here.
            assert armed.plan is not None
            assignment.pending = [timer for timer in armed.plan.timers if timer.kind is not TimerKind.warning]
            for timer in assignment.pending:
                self._seq += 1
                heapq.heappush(self._sla_heap, (timer.due_at, _TIMER_RANK[timer.kind], self._seq, assignment, timer))

    def _held(self, assignment: Assignment) -> HeldClock:
        """The assignment's first-touch clock as the monitor holds it."""
        return HeldClock(
            self._clock(assignment),
            assignment.at,
            responded_at=assignment.responded_at,
            responded_by=assignment.responded_by,
            superseded_by=uuid.UUID(int=0) if assignment.superseded else None,
            ladder=tuple(timer for timer in assignment.pending if timer.kind is TimerKind.escalation),
        )

    def _clock(self, assignment: Assignment) -> Clock:
        return Clock(
            deadline_id=assignment.decision_key,
            lead_id=assignment.lead_id,
            assignment_id=assignment.decision_key,
            rep_id=assignment.rep_id,
            team=assignment.pool_id,
            milestone=FIRST_TOUCH,
            tier=assignment.tier,
            due_at=assignment.due,
            status=_STATUS[assignment.sla],
            responded=assignment.responded_at is not None,
            reassignments=assignment.reassignments,
            paged=assignment.paged,
        )

    @staticmethod
    def _kept(assignment: Assignment, held: HeldClock) -> None:
        """What the core decided for the clock, back on the assignment."""
        assignment.sla = held.clock.status.value
        assignment.responded_at, assignment.responded_by = held.responded_at, held.responded_by
        if held.stopped:
            assignment.pending.clear()  # stopped: its pending timers retire

    # ------------------------------------------------------------------ SLA ladders

    def _fire_sla(self, assignment: Assignment, timer: Timer) -> None:
        """A breach or ladder step at its time, decided by the core as the live timer loop does."""
        clock = self._clock(assignment)
        verdict = on_sla_timer(clock, timer, timer.due_at)
        if verdict is None or not verdict.fire:
            return
        holder = self.holders[assignment.lead_id]
        # The lead's owners newest first, as the monitor reads them from its deadlines.
        previous = holder.owners[::-1]
        current = self.current[assignment.lead_id]
        cap = self.agreement.sla.policies[assignment.tier].max_reassignments
        after, facts = sla_clocks.fire(clock, timer, verdict, timer.due_at, previous, cap)
        assignment.sla, assignment.paged = after.status.value, after.paged
        for fact in facts:
            if isinstance(fact, SlaEscalatedV1):
                self.results.escalations.append(
                    Escalation(assignment.lead_id, timer.due_at, assignment.rep_id, fact.step.value, fact.step_index)
                )
            elif isinstance(fact, ReassignmentRequestedV1) and current is assignment:
                qualified = self._qualified[assignment.lead_id]
                again = qualified.model_copy(update={"event_id": fact.event_id, "tier": fact.tier})
                exclude = routing_state.reassignment_excludes(holder.owners, fact.exclude_reps, self.agreement)
                self._route(_Request(again, exclude, assignment), timer.due_at)

    def _park_reassignment(self, request: _Request, now: datetime) -> None:
        """A parked reassignment excludes the reps most likely to be free, and a lead nobody
        answers can wait in the queue for days. It is tried again after a release of a rep it
        may get (its pool's and the fallback pool's, less those excluded), and for what time
        changes (working hours, daily caps) after an hour, then two, four... at most a day,
        instead of every simulated minute. The live router tries every parked lead on its
        interval; this bounds the replay's difference to that back-off, at a fraction of the
        cost (a 30-day, 20,000-lead replay tried such leads 115,000 times)."""
        lead_id = request.fact.lead_id
        first = lead_id not in self.parked_reassignments
        self.parked_reassignments[lead_id] = request
        backoff = REASSIGNMENT_RETRY_EVERY if first else min(self._backoff[lead_id] * 2, REASSIGNMENT_RETRY_MAX)
        self._backoff[lead_id] = backoff
        self._seq += 1
        heapq.heappush(self._retry_heap, (now + backoff, self._seq, lead_id))
        fact = request.fact
        lead = RoutingInput(attributes=fact.attributes, tier=fact.tier, source=fact.source, persona=fact.persona)
        pools = {select_pool(lead, self.agreement)[1], self.agreement.routing.fallback_pool}
        members = {member.rep for pool in pools for member in self.roster.pools.get(pool, ())}
        for rep in members - set(request.exclude):
            self._waiting_on.setdefault(rep, set()).add(lead_id)

    def _retry_reassignments(self, now: datetime) -> None:
        due = self._freed
        self._freed = set()
        heap = self._retry_heap
        while heap and heap[0][0] <= now:
            due.add(heapq.heappop(heap)[2])
        for lead_id in sorted(due):
            request = self.parked_reassignments.get(lead_id)
            if request is not None:
                self._route(request, now)

    def _freed_by(self, rep: str) -> None:
        """A lead of ``rep`` stopped counting: the parked reassignments that may get ``rep`` are tried."""
        waiting = self._waiting_on.pop(rep, None)
        if waiting:
            self._freed.update(waiting)

    def _release(self, lead_id: uuid.UUID, happened_at: datetime) -> None:
        holder = self.holders.get(lead_id)
        if holder is None:
            return
        after, released = routing_state.release(self._view(lead_id, None), lead_id, happened_at)
        if released is not None:
            self._freed_by(released.rep_id)
            self._keep(after)

    # ------------------------------------------------------------------ SLA

    def _respond(self, event: ActivityAcceptedV1) -> None:
        assignment = self.current.get(event.lead_id)
        if assignment is None or assignment.superseded:
            return
        held = self._held(assignment)
        after, _ = sla_clocks.respond_to(held, event, self.agreement, self.clock or event.occurred_at)
        if after is not held:
            self._kept(assignment, after)
