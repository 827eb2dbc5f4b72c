"""Review of a valid agreement: warnings for what can never happen, and a diff of two versions.

A warning is not an error: the agreement loads and runs. It points at a rule that can never
fire (a ``between`` on a text field, a country that is not a two-letter code), a threshold no
lead can reach, or an entry that can never be chosen, so RevOps fixes it before both sides sign.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from coxswain.core.agreement import Agreement, AgreementProblem, AttributeRule, Match
from coxswain.core.routing import routing_warnings
from schemas.events import EscalationAction

NUMERIC_FIELDS = frozenset({"company_size"})
COMPANY_SIZE_RANGE = (0, 10_000_000)
COUNTRY = re.compile(r"^[A-Za-z]{2}$")


def agreement_warnings(agreement: Agreement) -> list[AgreementProblem]:
    warnings: list[AgreementProblem] = []
    for kind in ("fit", "negative"):
        rules: Sequence[AttributeRule] = getattr(agreement.scoring, kind)
        for i, rule in enumerate(rules):
            reason = never_matches(rule.field, rule.match)
            if reason:
                warnings.append(
                    AgreementProblem(f"scoring.{kind}.{i}.match", f"rule {rule.id!r} can never fire: {reason}")
                )
    warnings += _persona_warnings(agreement)
    warnings += _engagement_warnings(agreement)
    warnings += _threshold_warnings(agreement)
    warnings += _playbook_warnings(agreement)
    warnings += _routing_warnings(agreement)
    warnings += _ladder_warnings(agreement)
    # Shadowed rules and unreachable pools: one list of warnings for the CLI and the admin API.
    warnings += routing_warnings(agreement)
    return warnings


def never_matches(field: str, match: Match) -> str | None:
    """Why a test on ``field`` can match no lead at all, or None when some lead could match."""
    texts = [str(match.equals)] if isinstance(match.equals, str) else list(match.in_ or ())
    if match.between is not None:
        if field not in NUMERIC_FIELDS:
            return f"between compares numbers, but {field} is text (use equals, in or contains_any)"
        low, high = match.between
        if high < COMPANY_SIZE_RANGE[0] or low > COMPANY_SIZE_RANGE[1]:
            return f"{field} is always within {COMPANY_SIZE_RANGE[0]}..{COMPANY_SIZE_RANGE[1]}, not {low:g}..{high:g}"
        return None
    if field in NUMERIC_FIELDS:
        words = [value for value in [*texts, *(match.contains_any or ())] if not _is_number(value)]
        if words and len(words) == len([*texts, *(match.contains_any or ())]):
            return f"{field} is a number, so it never equals or contains {', '.join(map(repr, words))}"
        return None
    if field == "country" and texts and not any(COUNTRY.match(value) for value in texts):
        return f"country is a two-letter ISO code (US, DE, ...), never {', '.join(map(repr, texts))}"
    if field == "email_domain" and texts and all("@" in value for value in texts):
        return "email_domain is the part after @ (acme.com), never a whole address"
    if match.in_ is not None and not match.in_:
        return "in: [] matches nothing"
    if match.contains_any is not None and not match.contains_any:
        return "contains_any: [] matches nothing"
    return None


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _persona_warnings(agreement: Agreement) -> list[AgreementProblem]:
    warnings = []
    seen: dict[str, str] = {}
    for i, persona in enumerate(agreement.personas):
        for field, test in persona.match.items():
            reason = never_matches(field, test)
            if reason:
                warnings.append(
                    AgreementProblem(f"personas.{i}.match.{field}", f"persona {persona.id!r} never matches: {reason}")
                )
        signature = repr(sorted((field, test.model_dump()) for field, test in persona.match.items()))
        if signature in seen:
            warnings.append(
                AgreementProblem(
                    f"personas.{i}",
                    f"persona {persona.id!r} has the same tests as {seen[signature]!r}, which comes first and "
                    "always wins",
                )
            )
        seen.setdefault(signature, persona.id)
    return warnings


def _engagement_warnings(agreement: Agreement) -> list[AgreementProblem]:
    scored = {rule.event for rule in agreement.scoring.engagement}
    return [
        AgreementProblem(
            f"scoring.fast_lanes.{i}.event",
            f"fast lane {lane.id!r} fires on {lane.event.value}, which no engagement rule scores: the lane still "
            "qualifies the lead, but the event adds no points (add an engagement rule, or check the event name)",
        )
        for i, lane in enumerate(agreement.scoring.fast_lanes)
        if lane.event not in scored
    ]


def max_possible_score(agreement: Agreement) -> float:
    """An upper bound of any lead's score: every fit rule at once, every engagement at its most."""
    fit = sum(rule.points for rule in agreement.scoring.fit)
    engagement = 0.0
    for rule in agreement.scoring.engagement:
        bound = math.inf
        if rule.cap_per_window is not None:
            # At most cap points per window, each window older by one window length: a geometric series.
            ratio = 2.0 ** -(rule.cap_per_window.window / rule.half_life)
            bound = rule.cap_per_window.points / (1 - ratio)
        if rule.cap is not None:
            bound = min(bound, rule.cap)
        engagement += bound
    return fit + engagement


def _threshold_warnings(agreement: Agreement) -> list[AgreementProblem]:
    best = max_possible_score(agreement)
    if math.isinf(best):
        return []
    scoring = agreement.scoring
    checks = [("scoring.mql.enter", "the MQL entry", scoring.mql.enter)]
    if scoring.sql is not None:
        checks.append(("scoring.sql.enter", "the SQL entry", scoring.sql.enter))
    checks += [
        ("scoring.tiers.hot", "the hot tier", scoring.tiers.hot),
        ("scoring.tiers.warm", "the warm tier", scoring.tiers.warm),
    ]
    lanes = " (only a fast lane can get there)" if scoring.fast_lanes else ""
    return [
        AgreementProblem(
            path, f"{what} ({threshold:g}) is above the highest score any lead can reach ({best:g}){lanes}"
        )
        for path, what, threshold in checks
        if threshold > best
    ]


def _playbook_warnings(agreement: Agreement) -> list[AgreementProblem]:
    untiered = {"lead", "recycled"}
    return [
        AgreementProblem(
            f"playbooks.{i}.tier",
            f"playbook {entry.id!r} is for tier {entry.tier.value}, but a lead in stage {entry.stage.value} has no "
            "tier; it is never chosen",
        )
        for i, entry in enumerate(agreement.playbooks)
        if entry.tier is not None and entry.stage.value in untiered
    ]


def _routing_warnings(agreement: Agreement) -> list[AgreementProblem]:
    personas = {persona.id.casefold() for persona in agreement.personas}
    warnings = []
    for i, rule in enumerate(agreement.routing.rules):
        unknown = [value for value in rule.when.get("persona", ()) if value.casefold() not in personas]
        if unknown:
            warnings.append(
                AgreementProblem(
                    f"routing.rules.{i}.when.persona",
                    f"routing rule {rule.id!r} names persona(s) {', '.join(map(repr, unknown))}, which are not "
                    f"defined; allowed: {', '.join(sorted(personas)) or 'none defined'}",
                )
            )
    return warnings


def _ladder_warnings(agreement: Agreement) -> list[AgreementProblem]:
    """Steps of an escalation ladder that can never do what they say. The ladder belongs to the
    lead's follow-up: it runs on across reassignments, pages on-call at most once, and a reassign
    past ``max_reassignments`` pages instead."""
    warnings = []
    for tier, policy in agreement.sla.policies.items():
        reassigns, paged_at = 0, None
        for i, step in enumerate(policy.escalation):
            where = f"sla.policies.{tier.value}.escalation.{i}"
            pages = step.step is EscalationAction.page_oncall
            if step.step is EscalationAction.reassign:
                reassigns += 1
                if paged_at is None and reassigns > policy.max_reassignments:
                    warnings.append(
                        AgreementProblem(
                            where,
                            f"reassign is past max_reassignments ({policy.max_reassignments}): it pages on-call "
                            "instead of reassigning",
                        )
                    )
                    pages = True
                    paged_at = i
                    continue
            if paged_at is not None and step.step in (EscalationAction.page_oncall, EscalationAction.reassign):
                warnings.append(
                    AgreementProblem(
                        where,
                        f"{step.step.value} can never fire: on-call is paged once per follow-up, at step {paged_at}",
                    )
                )
                continue
            if pages:
                paged_at = i
    return warnings


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "added", "removed" or "changed"
    old: Any = None
    new: Any = None

    def __str__(self) -> str:
        if self.kind == "added":
            return f"+ {self.path}: {_show(self.new)}"
        if self.kind == "removed":
            return f"- {self.path}: {_show(self.old)}"
        return f"~ {self.path}: {_show(self.old)} -> {_show(self.new)}"


LIST_KEYS = ("id", "code", "rep", "event")


def comparable(agreement: Agreement) -> dict[str, Any]:
    """The agreement as plain data, with durations as people write them (14d, 5m)."""
    plain: dict[str, Any] = _plain(agreement.model_dump(by_alias=True, exclude_none=True))
    return plain


def diff_agreements(old: Agreement, new: Agreement) -> list[Change]:
    return _diff("", comparable(old), comparable(new))


def _diff(path: str, old: Any, new: Any) -> list[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in [*old, *(key for key in new if key not in old)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                changes.append(Change(where, "removed", old=old[key]))
            elif key not in old:
                changes.append(Change(where, "added", new=new[key]))
            else:
                changes += _diff(where, old[key], new[key])
        return changes
    if isinstance(old, list) and isinstance(new, list):
        key = _list_key(old, new)
        if key is not None:
            return _keyed(path, key, old, new)
    return [] if old == new else [Change(path, "changed", old=old, new=new)]


def _keyed(path: str, key: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[Change]:
    """Lists of entries with an id: compare entry by entry, and say when only the order changed."""
    before = {str(item[key]): item for item in old}
    after = {str(item[key]): item for item in new}
    changes: list[Change] = []
    for name in [*before, *(name for name in after if name not in before)]:
        where = f"{path}[{name}]"
        if name not in after:
            changes.append(Change(where, "removed", old=before[name]))
        elif name not in before:
            changes.append(Change(where, "added", new=after[name]))
        else:
            changes += _diff(where, before[name], after[name])
    kept_old = [name for name in before if name in after]
    kept_new = [name for name in after if name in before]
    if kept_old != kept_new:
        # Order matters: rules are evaluated first match first, personas first match first.
        changes.append(Change(f"{path} (order)", "changed", old=kept_old, new=kept_new))
    return changes


def _list_key(old: list[Any], new: list[Any]) -> str | None:
    items = [*old, *new]
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in LIST_KEYS:
        if all(key in item for item in items) and all(
            len({str(item[key]) for item in side}) == len(side) for side in (old, new)
        ):
            return key
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(_plain(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, timedelta):
        return human_duration(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def human_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)
