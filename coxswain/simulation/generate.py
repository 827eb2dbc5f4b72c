"""Synthetic B2B lead streams for demos, tests, benchmarks and the simulator.

A stream is JSON Lines, one intake request per line, in time order:
``{"at": ISO-8601, "source": str, "kind": "lead" | "activity", "body": {...}}`` where ``body`` is
exactly what the intake endpoint of that kind accepts. Everything is drawn from one seeded
``random.Random``, so a seed always yields the same stream.

The shape follows what marketing teams see: people of a few personas from companies of various
sizes and regions arrive during their local working hours on working days, fewer on public
holidays and more in the last two weeks of a quarter; each person engages in a short sequence
(page views, downloads, webinars, sometimes a demo request); some of them are later touched by
a rep after a delay drawn from that rep's habits.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import orjson

from coxswain.core.identity import lead_id_for


@dataclass(frozen=True)
class Persona:
    name: str
    titles: tuple[str, ...]
    seniority: str
    department: str
    share: float
    intent: float  # chance that a sequence ends with a demo request


PERSONAS = (
    Persona(
        "executive",
        ("VP Marketing", "Chief Revenue Officer", "Head of Sales", "CMO"),
        "executive",
        "marketing",
        0.15,
        0.35,
    ),
    Persona(
        "ops-leader",
        ("Director of RevOps", "Head of Marketing Operations", "Sales Ops Lead"),
        "director",
        "operations",
        0.25,
        0.25,
    ),
    Persona(
        "practitioner", ("Marketing Manager", "Demand Gen Manager", "SDR Manager"), "manager", "marketing", 0.35, 0.12
    ),
    Persona("technical", ("Engineer", "Data Analyst", "CTO"), "individual", "engineering", 0.15, 0.08),
    Persona("student", ("Student", "Intern"), "entry", "none", 0.10, 0.01),
)


@dataclass(frozen=True)
class Region:
    country: str
    timezone: str
    share: float


REGIONS = (
    Region("US", "America/New_York", 0.35),
    Region("US", "America/Los_Angeles", 0.15),
    Region("CA", "America/Toronto", 0.07),
    Region("GB", "Europe/London", 0.13),
    Region("DE", "Europe/Berlin", 0.12),
    Region("FR", "Europe/Paris", 0.08),
    Region("NL", "Europe/Amsterdam", 0.05),
    Region("AU", "Australia/Sydney", 0.05),
)

SOURCES = (("hubspot", 0.45), ("marketo", 0.25), ("webform", 0.30))
CAMPAIGNS = ("q-webinar-series", "pricing-page", "analyst-report", "paid-search", "partner-referral", "newsletter")
INDUSTRIES = ("software", "fintech", "healthcare", "retail", "manufacturing", "education")
COMPANY_SIZES = ((5, 0.15), (30, 0.2), (150, 0.25), (800, 0.2), (3000, 0.12), (20000, 0.08))
SEQUENCE = (
    "page_view",
    "page_view",
    "email_click",
    "content_download",
    "webinar_attended",
    "pricing_view",
    "form_submit",
)
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com")


@dataclass(frozen=True)
class StreamSpec:
    leads: int
    start: date
    days: int = 30
    seed: int = 7
    touch_share: float = 0.7
    reps: tuple[str, ...] = ("ava", "ben", "chloe", "dan", "eli")
    # Company domains are ``companyN.<domain>``; a distinct domain keeps streams from meeting.
    domain: str = "example.com"
    # Sales' answers after a first touch: (activity, share of touched leads, reasons to draw from).
    outcomes: tuple[tuple[str, float], ...] = (
        ("sal_accepted", 0.35),
        ("sal_rejected", 0.15),
        ("disqualified", 0.05),
    )
    rejection_reasons: tuple[str, ...] = ("no-budget", "bad-timing", "wrong-person")
    sql_share: float = 0.4  # of accepted leads, later qualified by sales


class Weighted:
    """A fixed weighted choice, with cumulative weights computed once (drawn ~10^6 times)."""

    def __init__(self, options: Iterable[tuple[Any, float]]) -> None:
        pairs = list(options)
        self.population = [option for option, _ in pairs]
        self.cumulative = list(accumulate(weight for _, weight in pairs))

    def draw(self, rng: random.Random) -> Any:
        return rng.choices(self.population, cum_weights=self.cumulative)[0]


_COMPANY_SIZES = Weighted(COMPANY_SIZES)


def day_weights(spec: StreamSpec) -> list[tuple[date, float]]:
    """Relative traffic per day: weekends and holidays quiet, the end of a quarter busy."""
    us_holidays = holidays.country_holidays("US", years={spec.start.year, spec.start.year + 1})
    weights = []
    for offset in range(spec.days):
        day = spec.start + timedelta(days=offset)
        weight = 1.0
        if day.weekday() >= 5:
            weight = 0.15
        if day in us_holidays:
            weight = 0.25
        quarter_end_month = day.month % 3 == 0
        if quarter_end_month and day.day >= 15:
            weight *= 1.6
        weights.append((day, weight))
    return weights


def _arrival(rng: random.Random, day: date, region: Region) -> datetime:
    """A moment in the person's local working day (skewed to mornings), as UTC."""
    hour = min(17.99, max(8.0, rng.gauss(11.5, 2.5)))
    local = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(region.timezone)) + timedelta(hours=hour)
    return local.astimezone(UTC)


def _contact(rng: random.Random, index: int, persona: Persona, region: Region, suffix: str) -> dict[str, Any]:
    company = f"company{rng.randint(1, max(50, index // 3))}"
    domain = rng.choice(FREE_MAIL) if rng.random() < 0.08 else f"{company}.{suffix}"
    local = f"person{index}" if suffix == "example.com" else f"person{index}.{suffix.split('.')[0]}"
    return {
        "email": f"{local}@{domain}",
        "first_name": "Sam",
        "last_name": f"Lead{index}",
        "title": rng.choice(persona.titles),
        "seniority": persona.seniority,
        "department": persona.department,
        "company": company,
        "company_domain": f"{company}.{suffix}",
        "company_size": _COMPANY_SIZES.draw(rng),
        "industry": rng.choice(INDUSTRIES),
        "country": region.country,
        "campaign": rng.choice(CAMPAIGNS),
    }


def _sales_answer(rng: random.Random, spec: StreamSpec, lead_id: str, at: datetime) -> list[dict[str, Any]]:
    """What sales did after the first touch: accept (and maybe qualify), reject with a reason, or
    disqualify; nothing for the rest."""
    draw, lines = rng.random(), []
    for activity, share in spec.outcomes:
        if draw >= share:
            draw -= share
            continue
        at += timedelta(hours=rng.lognormvariate(1.5, 1.0))
        body: dict[str, Any] = {"lead_id": lead_id, "activity": activity, "occurred_at": at.isoformat()}
        if activity == "sal_rejected" and spec.rejection_reasons:
            body["reason"] = rng.choice(spec.rejection_reasons)
        lines.append({"at": at.isoformat(), "source": "crm", "kind": "activity", "body": body})
        if activity == "sal_accepted" and rng.random() < spec.sql_share:
            at += timedelta(days=rng.lognormvariate(1.0, 0.8))
            body = {"lead_id": lead_id, "activity": "sql_qualified", "occurred_at": at.isoformat()}
            lines.append({"at": at.isoformat(), "source": "crm", "kind": "activity", "body": body})
        break
    return lines


# How many leads ``generate`` makes between two calls of its ``made`` callback.
MADE_EVERY = 250


def generate(spec: StreamSpec, made: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the stream's lines in time order; ``made(n)``: n more leads were made (about 80% of
    the work comes before the first line, so that is what a person watching is told about)."""
    rng = random.Random(spec.seed)
    days = Weighted(day_weights(spec))
    personas = Weighted((p, p.share) for p in PERSONAS)
    regions = Weighted((r, r.share) for r in REGIONS)
    sources = Weighted(SOURCES)
    lines: list[dict[str, Any]] = []
    for index in range(spec.leads):
        if made is not None and index and index % MADE_EVERY == 0:
            made(MADE_EVERY)
        persona: Persona = personas.draw(rng)
        region: Region = regions.draw(rng)
        source: str = sources.draw(rng)
        day: date = days.draw(rng)
        at = _arrival(rng, day, region)
        contact = _contact(rng, index, persona, region, spec.domain)
        steps = rng.randint(1, 4)
        for step in range(steps):
            engagement = rng.choice(SEQUENCE)
            body = {
                "type": engagement,
                "external_id": f"{source}-{index}",
                "occurred_at": at.isoformat(),
                "contact": contact,
            }
            lines.append({"at": at.isoformat(), "source": source, "kind": "lead", "body": body})
            at += timedelta(minutes=rng.expovariate(1 / 90)) if step < steps - 1 else timedelta(0)
        if rng.random() < persona.intent:
            at += timedelta(minutes=rng.expovariate(1 / 30))
            body = {
                "type": "demo_request",
                "external_id": f"{source}-{index}",
                "occurred_at": at.isoformat(),
                "contact": contact,
            }
            lines.append({"at": at.isoformat(), "source": source, "kind": "lead", "body": body})
        if rng.random() < spec.touch_share:
            lead_id = str(lead_id_for(contact["email"], source, f"{source}-{index}"))
            at += timedelta(minutes=rng.lognormvariate(2.5, 1.0))
            touch = {"lead_id": lead_id, "activity": "first_touch", "occurred_at": at.isoformat()}
            lines.append({"at": at.isoformat(), "source": "crm", "kind": "activity", "body": touch})
            lines += _sales_answer(rng, spec, lead_id, at)
    if made is not None and spec.leads:
        made(spec.leads - (spec.leads - 1) // MADE_EVERY * MADE_EVERY)
    lines.sort(key=lambda line: line["at"])
    yield from lines


def write_stream(spec: StreamSpec, path: Path, made: Callable[[int], None] | None = None) -> int:
    """Write the stream as JSON Lines; the number of lines written."""
    count = 0
    with path.open("wb") as handle:
        for line in generate(spec, made):
            handle.write(orjson.dumps(line) + b"\n")
            count += 1
    return count
