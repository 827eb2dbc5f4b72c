"""The agreed lifecycle: which stage a lead may move to from which, and why it moves.

Lead -> MQL -> SAL -> SQL -> Opportunity -> Customer, with the detours Recycled and
Disqualified. Two moves go one step back when the score falls below an exit threshold
(hysteresis): MQL -> Lead, and a score-made SQL -> SAL.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.events import ActivityType, Stage

LEGAL_TRANSITIONS: Mapping[Stage, frozenset[Stage]] = {
    Stage.lead: frozenset({Stage.mql, Stage.disqualified}),
    Stage.mql: frozenset({Stage.sal, Stage.lead, Stage.recycled, Stage.disqualified}),
    Stage.sal: frozenset({Stage.sql, Stage.recycled, Stage.disqualified}),
    Stage.sql: frozenset({Stage.opportunity, Stage.sal, Stage.recycled, Stage.disqualified}),
    Stage.opportunity: frozenset({Stage.customer, Stage.recycled}),
    Stage.customer: frozenset(),
    Stage.recycled: frozenset({Stage.mql, Stage.disqualified}),
    Stage.disqualified: frozenset(),
}

# What each CRM activity asks of the lifecycle; activities absent here change no stage.
ACTIVITY_TARGET: Mapping[ActivityType, Stage] = {
    ActivityType.sal_accepted: Stage.sal,
    ActivityType.sal_rejected: Stage.recycled,
    ActivityType.sql_qualified: Stage.sql,
    ActivityType.opportunity_created: Stage.opportunity,
    ActivityType.won: Stage.customer,
    ActivityType.lost: Stage.recycled,
    ActivityType.disqualified: Stage.disqualified,
}

QUALIFIABLE = frozenset({Stage.lead, Stage.recycled})

# Where a stage falls back to when the score drops below its exit threshold.
DEMOTION: Mapping[Stage, Stage] = {Stage.mql: Stage.lead, Stage.sql: Stage.sal}


class LifecycleRefused(ValueError):
    """A request the agreement does not allow; the consumer dead-letters it with this message."""


class IllegalTransition(LifecycleRefused):
    def __init__(self, current: Stage, target: Stage, cause: str) -> None:
        allowed = ", ".join(sorted(s.value for s in LEGAL_TRANSITIONS[current])) or "none (final stage)"
        super().__init__(
            f"{cause} asks to move the lead from {current.value} to {target.value}, "
            f"which the agreement does not allow; from {current.value} it may go to: {allowed}"
        )
        self.current = current
        self.target = target


class UnknownRejectionReason(LifecycleRefused):
    def __init__(self, given: str | None, allowed: list[str]) -> None:
        what = "no reason code" if not given else f"reason code {given!r}, which the agreement does not define"
        super().__init__(f"sal_rejected carries {what}; allowed: {', '.join(allowed)}")
        self.given = given


# The forward path a lead walks; an activity that jumps ahead on it skips the stages between.
WATERFALL: tuple[Stage, ...] = (Stage.lead, Stage.mql, Stage.sal, Stage.sql, Stage.opportunity, Stage.customer)


def skipped_stages(current: Stage, target: Stage) -> tuple[Stage, ...] | None:
    """The stages between ``current`` and ``target`` when ``target`` lies ahead on the waterfall
    and can only be reached by passing them (``()`` for a legal move); None when no forward walk
    reaches it. A recycled lead walks on from MQL, the stage it re-enters at."""
    if target in LEGAL_TRANSITIONS[current]:
        return ()
    start = Stage.mql if current is Stage.recycled else current
    if start not in WATERFALL or target not in WATERFALL:
        return None
    here, there = WATERFALL.index(start), WATERFALL.index(target)
    if there <= here:
        return None
    walk = (*((Stage.mql,) if current is Stage.recycled else ()), *WATERFALL[here + 1 : there])
    return tuple(stage for stage in walk if stage is not current)


def transition(current: Stage, target: Stage, cause: str) -> Stage:
    if target not in LEGAL_TRANSITIONS[current]:
        raise IllegalTransition(current, target, cause)
    return target
