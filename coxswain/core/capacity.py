"""How much a rep already carries: open load weighted by tier, and leads received today.

Open load counts every lead assigned to the rep and not yet released (accepted, rejected,
disqualified, recycled or reassigned), each weighted by its tier (``routing.load``: a hot lead
weighs more than a cold one). The daily count restarts at midnight in the rep's own time zone.
The shell keeps one ``RepLoad`` row per rep and changes it in the assignment's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime

from coxswain.core.roster import RepProfile


@dataclass(frozen=True)
class RepLoad:
    open_load: int = 0
    open_leads: int = 0
    day: date | None = None
    assigned_on_day: int = 0


def assigned_today(load: RepLoad, profile: RepProfile, now: datetime) -> int:
    return load.assigned_on_day if load.day == profile.local_date(now) else 0


def over_limit_because(profile: RepProfile, load: RepLoad, lead_load: int, now: datetime) -> str | None:
    """Why one more lead of ``lead_load`` would break the rep's daily cap or capacity; None if it fits."""
    today = assigned_today(load, profile, now)
    if profile.daily_cap is not None and today >= profile.daily_cap:
        return f"daily cap reached ({today} of {profile.daily_cap} today, {profile.timezone})"
    if profile.capacity is not None and load.open_load + lead_load > profile.capacity:
        return f"at capacity (open load {load.open_load} + {lead_load} would exceed {profile.capacity})"
    return None


def after_assignment(load: RepLoad, profile: RepProfile | None, lead_load: int, now: datetime) -> RepLoad:
    today = profile.local_date(now) if profile is not None else now.date()
    count = load.assigned_on_day + 1 if load.day == today else 1
    return RepLoad(load.open_load + lead_load, load.open_leads + 1, today, count)


def after_release(load: RepLoad, lead_load: int) -> RepLoad:
    return replace(load, open_load=max(0, load.open_load - lead_load), open_leads=max(0, load.open_leads - 1))
