"""The agreement's newer sections: personas, window caps, SQL criteria, fast-lane holds, the
lifecycle (stages, recycle cooldown, rejection reasons) and playbooks. Each malformed document
gets a located, specific problem; valid ones get warnings for what can never fire; two versions
can be diffed rule by rule."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from coxswain.contracts import agreement_schema
from coxswain.core.agreement import AgreementError, AgreementProblem, parse_agreement
from coxswain.core.agreement_checks import (
    Change,
    agreement_warnings,
    diff_agreements,
    human_duration,
    max_possible_score,
)
from coxswain.runtime.agreements import digest, normalised
from coxswain_app.cli import app
from schemas.events import Stage, Tier
from schemas.generate import AGREEMENT_SCHEMA_FILE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PATH = ROOT / "examples" / "agreement.yaml"
EXAMPLE_DOC: dict[str, Any] = yaml.safe_load(EXAMPLE_PATH.read_text(encoding="utf-8"))

Doc = dict[str, Any]


def mutated(mutate: Callable[[Doc], object]) -> Doc:
    document = copy.deepcopy(EXAMPLE_DOC)
    mutate(document)
    return document


def problems_of(document: object) -> tuple[AgreementProblem, ...]:
    with pytest.raises(AgreementError) as caught:
        parse_agreement(document, source="agreement.yaml")
    return caught.value.problems


def at(document: Doc, *path: str | int) -> Any:
    target: Any = document
    for part in path:
        target = target[part]
    return target


def put(*path: str | int, value: object) -> Callable[[Doc], None]:
    def mutate(document: Doc) -> None:
        at(document, *path[:-1])[path[-1]] = value

    return mutate


def add(*path: str | int, value: object) -> Callable[[Doc], None]:
    def mutate(document: Doc) -> None:
        at(document, *path).append(value)

    return mutate


def drop(*path: str | int) -> Callable[[Doc], None]:
    def mutate(document: Doc) -> None:
        del at(document, *path[:-1])[path[-1]]

    return mutate


PAGE_VIEW = 6  # index of the page_view engagement rule in the example
HOT_PLAYBOOK = {"id": "hot-again", "stage": "mql", "tier": "hot", "talk_track": "Call."}

MALFORMED: list[tuple[str, Callable[[Doc], object], str, str]] = [
    (
        "persona tests an attribute personas cannot use",
        put("personas", 0, "match", "industry", value={"equals": "software"}),
        "personas.0.match.industry.[key]",
        "got 'industry'; allowed: 'title', 'seniority' or 'department'",
    ),
    ("persona without tests", put("personas", 1, "match", value={}), "personas.1.match", "at least 1 item"),
    (
        "persona id used twice",
        put("personas", 2, "id", value="revenue-leader"),
        "personas.2.id",
        "personas: id 'revenue-leader' is used more than once",
    ),
    ("persona id not an identifier", put("personas", 0, "id", value="Revenue Leader"), "personas.0.id", "pattern"),
    (
        "persona test with two tests",
        put("personas", 0, "match", "seniority", value={"in": ["vp"], "equals": "vp"}),
        "personas.0.match.seniority",
        "a match needs exactly one test, got 2",
    ),
    (
        "fit rule names an undefined persona",
        put("scoring", "fit", 6, "match", value={"equals": "cfo-persona"}),
        "scoring.fit.6.match",
        "names persona 'cfo-persona', which is not defined; allowed: revenue-leader, ops-champion, technical-evaluator",
    ),
    (
        "negative rule names a persona when none is defined",
        lambda d: (
            d.pop("personas"),
            d["scoring"]["fit"].pop(6),
            d["playbooks"].clear(),
            d["scoring"]["negative"].append(
                {"id": "no-students", "field": "persona", "match": {"in": ["student"]}, "points": -5}
            ),
        ),
        "scoring.negative.3.match",
        "allowed: none defined (add a personas section)",
    ),
    (
        "window cap of zero length",
        put("scoring", "engagement", PAGE_VIEW, "cap_per_window", "window", value="0s"),
        "scoring.engagement.6.cap_per_window",
        "window must be positive, got 0 seconds",
    ),
    (
        "window cap of negative points",
        put("scoring", "engagement", PAGE_VIEW, "cap_per_window", "points", value=-5),
        "scoring.engagement.6.cap_per_window.points",
        "greater than 0",
    ),
    (
        "window cap with an unknown key",
        put("scoring", "engagement", PAGE_VIEW, "cap_per_window", "per", value="1d"),
        "scoring.engagement.6.cap_per_window.per",
        "unknown key",
    ),
    (
        "window cap without its window",
        drop("scoring", "engagement", PAGE_VIEW, "cap_per_window", "window"),
        "scoring.engagement.6.cap_per_window.window",
        "Field required",
    ),
    (
        "two engagement rules for one event",
        add("scoring", "engagement", value={"event": "page_view", "points": 2, "half_life": "1d"}),
        "scoring.engagement.7.event",
        "scoring.engagement events: id 'page_view' is used more than once",
    ),
    (
        "SQL exit above its entry",
        put("scoring", "sql", value={"enter": 90, "exit": 95}),
        "scoring.sql",
        "exit (95.0) must not be above enter (90.0), or leads would flap",
    ),
    ("SQL without exit", put("scoring", "sql", value={"enter": 90}), "scoring.sql.exit", "Field required"),
    (
        "fast lane hold of zero",
        put("scoring", "fast_lanes", 0, "hold", value="0m"),
        "scoring.fast_lanes.0",
        "hold must be positive, got 0 seconds",
    ),
    (
        "fast lane hold that is not a duration",
        put("scoring", "fast_lanes", 0, "hold", value="a while"),
        "scoring.fast_lanes.0.hold",
        "is not a valid timedelta; write a number and a unit (90s, 5m, 2h, 14d, 1w)",
    ),
    (
        "two fast lanes for one event",
        add("scoring", "fast_lanes", value={"id": "demo-again", "event": "demo_request", "tier": "warm"}),
        "scoring.fast_lanes.1.event",
        "scoring.fast_lanes events: id 'demo_request' is used more than once",
    ),
    (
        "definition of a stage that does not exist",
        put("lifecycle", "stages", "prospect", value={"owner": "sales", "definition": "x"}),
        "lifecycle.stages.prospect.[key]",
        "allowed: 'lead', 'mql', 'sal', 'sql', 'opportunity', 'customer', 'recycled' or 'disqualified'",
    ),
    (
        "stage owned by a third party",
        put("lifecycle", "stages", "sal", "owner", value="partners"),
        "lifecycle.stages.sal.owner",
        "got 'partners'; allowed: 'marketing' or 'sales'",
    ),
    (
        "negative recycle cooldown",
        put("lifecycle", "recycle_cooldown", value=-86400),
        "lifecycle",
        "recycle_cooldown must not be negative, got -1 day",
    ),
    (
        "rejection reason code used twice",
        put("lifecycle", "rejection_reasons", 1, "code", value="no-budget"),
        "lifecycle.rejection_reasons.1.code",
        "lifecycle.rejection_reasons: id 'no-budget' is used more than once",
    ),
    (
        "rejection reason with an unknown outcome",
        put("lifecycle", "rejection_reasons", 0, "outcome", value="ignore"),
        "lifecycle.rejection_reasons.0.outcome",
        "got 'ignore'; allowed: 'recycle' or 'disqualify'",
    ),
    (
        "disqualifying rejection with a cooldown",
        put("lifecycle", "rejection_reasons", 4, "cooldown", value="30d"),
        "lifecycle.rejection_reasons.4",
        "cooldown only applies to outcome recycle; a disqualified lead never re-qualifies",
    ),
    (
        "playbook for an undefined persona",
        put("playbooks", 2, "persona", value="cfo"),
        "playbooks.2.persona",
        "playbook 'mql-revenue-leader' names persona 'cfo', which is not defined",
    ),
    (
        "playbook for a stage that does not exist",
        put("playbooks", 0, "stage", value="nurture"),
        "playbooks.0.stage",
        "got 'nurture'; allowed:",
    ),
    (
        "two playbooks for the same stage, persona and tier",
        add("playbooks", value=HOT_PLAYBOOK),
        "playbooks.6",
        "playbook 'hot-again' covers the same stage mql, persona any and tier hot as playbook 'mql-hot'; only one may",
    ),
    ("playbook without a talk track", drop("playbooks", 4, "talk_track"), "playbooks.4.talk_track", "Field required"),
    (
        "playbook content that is not a web link",
        put("playbooks", 0, "content", 0, "url", value="file:///etc/passwd"),
        "playbooks.0.content.0.url",
        "pattern",
    ),
    (
        "playbook id used twice",
        put("playbooks", 1, "id", value="mql-default"),
        "playbooks.1.id",
        "playbooks: id 'mql-default' is used more than once",
    ),
    (
        "playbook for a tier that does not exist",
        put("playbooks", 1, "tier", value="lukewarm"),
        "playbooks.1.tier",
        "got 'lukewarm'; allowed: 'hot', 'warm' or 'cold'",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [pytest.param(mutate, path, fragment, id=name) for name, mutate, path, fragment in MALFORMED],
)
def test_malformed_section_names_path_and_problem(mutate: Callable[[Doc], object], path: str, fragment: str) -> None:
    problems = problems_of(mutated(mutate))

    located = [problem for problem in problems if problem.path == path]
    assert located, f"no problem at {path}; got {[str(p) for p in problems]}"
    assert any(fragment in problem.message for problem in located), [str(p) for p in located]


def test_there_are_at_least_twenty_distinct_malformed_sections() -> None:
    assert len(MALFORMED) >= 20
    assert len({name for name, *_ in MALFORMED}) == len(MALFORMED)
    assert len({(path, fragment) for _, _, path, fragment in MALFORMED}) == len(MALFORMED)


def test_new_sections_are_optional_and_default_to_nothing() -> None:
    minimal = mutated(lambda d: [d.pop(key) for key in ("personas", "lifecycle", "playbooks")])
    minimal["scoring"]["fit"].pop(6)
    for key in ("sql",):
        minimal["scoring"].pop(key)

    agreement = parse_agreement(minimal)

    assert agreement.personas == ()
    assert agreement.playbooks == ()
    assert agreement.lifecycle.recycle_cooldown == timedelta(0)
    assert agreement.lifecycle.rejection_reasons == ()
    assert agreement.scoring.sql is None


def test_example_sections_load() -> None:
    agreement = parse_agreement(EXAMPLE_DOC)

    assert [p.id for p in agreement.personas] == ["revenue-leader", "ops-champion", "technical-evaluator"]
    page_view = agreement.scoring.engagement[PAGE_VIEW]
    assert page_view.cap_per_window is not None
    assert (page_view.cap_per_window.points, page_view.cap_per_window.window) == (5, timedelta(days=1))
    assert agreement.scoring.sql is not None and (agreement.scoring.sql.enter, agreement.scoring.sql.exit) == (100, 85)
    assert agreement.scoring.fast_lanes[0].hold == timedelta(days=7)
    assert agreement.lifecycle.recycle_cooldown == timedelta(days=30)
    reason = agreement.lifecycle.rejection_reason("bad-timing")
    assert reason is not None and reason.cooldown == timedelta(days=90)
    assert agreement.lifecycle.rejection_reason("spam") is not None
    assert agreement.lifecycle.rejection_reason("unknown") is None
    assert agreement.lifecycle.stages[Stage.sal].owner == "sales"
    assert {(p.stage, p.persona, p.tier) for p in agreement.playbooks} >= {
        (Stage.mql, None, None),
        (Stage.mql, None, Tier.hot),
        (Stage.mql, "revenue-leader", None),
    }


# --------------------------------------------------------------------------- warnings


def warnings_of(mutate: Callable[[Doc], object]) -> list[str]:
    return [str(warning) for warning in agreement_warnings(parse_agreement(mutated(mutate)))]


def test_the_example_has_no_warnings() -> None:
    assert agreement_warnings(parse_agreement(EXAMPLE_DOC)) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            put("scoring", "fit", 0, "match", value={"between": [1, 5]}),
            "scoring.fit.0.match: rule 'title-decision-maker' can never fire: between compares numbers, but title "
            "is text (use equals, in or contains_any)",
            id="between on text",
        ),
        pytest.param(
            put("scoring", "fit", 3, "match", value={"between": [20_000_000, 30_000_000]}),
            "scoring.fit.3.match: rule 'size-enterprise' can never fire: company_size is always within "
            "0..10000000, not 2e+07..3e+07",
            id="size out of range",
        ),
        pytest.param(
            put("scoring", "fit", 2, "match", value={"in": ["large", "huge"]}),
            "scoring.fit.2.match: rule 'size-mid-market' can never fire: company_size is a number, so it never "
            "equals or contains 'large', 'huge'",
            id="words for a number",
        ),
        pytest.param(
            put("scoring", "fit", 5, "match", value={"in": ["USA", "Germany"]}),
            "scoring.fit.5.match: rule 'country-served' can never fire: country is a two-letter ISO code "
            "(US, DE, ...), never 'USA', 'Germany'",
            id="country names",
        ),
        pytest.param(
            put("scoring", "negative", 2, "match", value={"equals": "spy@contoso-analytics.com"}),
            "scoring.negative.2.match: rule 'competitor' can never fire: email_domain is the part after @ "
            "(acme.com), never a whole address",
            id="address for a domain",
        ),
        pytest.param(
            put("personas", 2, "match", value={"department": {"between": [1, 2]}}),
            "personas.2.match.department: persona 'technical-evaluator' never matches: between compares numbers, "
            "but department is text (use equals, in or contains_any)",
            id="persona between on text",
        ),
        pytest.param(
            put("personas", 2, "match", value=EXAMPLE_DOC["personas"][1]["match"]),
            "personas.2: persona 'technical-evaluator' has the same tests as 'ops-champion', which comes first "
            "and always wins",
            id="shadowed persona",
        ),
        pytest.param(
            add("scoring", "fast_lanes", value={"id": "webinar", "event": "email_open"}),
            "scoring.fast_lanes.1.event: fast lane 'webinar' fires on email_open, which no engagement rule scores",
            id="fast lane without engagement",
        ),
        pytest.param(
            put("playbooks", 5, "tier", value="hot"),
            "playbooks.5.tier: playbook 'recycled-default' is for tier hot, but a lead in stage recycled has no "
            "tier; it is never chosen",
            id="tiered playbook for an untiered stage",
        ),
        pytest.param(
            add("routing", "rules", value={"id": "cfos", "when": {"persona": ["cfo"]}, "pool": "emea"}),
            "routing.rules.2.when.persona: routing rule 'cfos' names persona(s) 'cfo', which are not defined",
            id="routing on an undefined persona",
        ),
    ],
)
def test_rules_that_can_never_fire_are_warned_about(mutate: Callable[[Doc], None], expected: str) -> None:
    warnings = warnings_of(mutate)

    assert any(warning.startswith(expected) for warning in warnings), warnings


def bounded(document: Doc) -> None:
    """Every engagement rule capped, so the highest possible score is finite."""
    document["scoring"]["engagement"][0]["cap"] = 40


def test_thresholds_no_lead_can_reach_are_warned_about() -> None:
    document = mutated(bounded)
    best = max_possible_score(parse_agreement(document))
    # Fit: 25+10+15+20+10+5+10 = 95; engagement: 40+30+30+20+24+12+min(10, 5/(1-2^(-1/3))).
    assert best == pytest.approx(95 + 40 + 30 + 30 + 20 + 24 + 12 + 10)
    document["scoring"]["mql"] = {"enter": 300, "exit": 250}
    document["scoring"]["tiers"] = {"hot": 400, "warm": 300}

    warnings = [str(w) for w in agreement_warnings(parse_agreement(document))]

    assert (
        f"scoring.mql.enter: the MQL entry (300) is above the highest score any lead can reach ({best:g}) "
        "(only a fast lane can get there)"
    ) in warnings
    assert any(w.startswith("scoring.tiers.hot: the hot tier (400) is above") for w in warnings)
    assert any(w.startswith("scoring.tiers.warm: the warm tier (300) is above") for w in warnings)
    assert not any(w.startswith("scoring.sql.enter") for w in warnings), "100 is reachable"


def test_window_cap_bounds_engagement_by_a_geometric_series() -> None:
    document = mutated(bounded)
    page_view = document["scoring"]["engagement"][PAGE_VIEW]
    del page_view["cap"]
    page_view["cap_per_window"] = {"points": 5, "window": "3d"}  # window = half-life: 5 / (1 - 1/2) = 10

    assert max_possible_score(parse_agreement(document)) == pytest.approx(95 + 40 + 30 + 30 + 20 + 24 + 12 + 10)


def test_an_uncapped_engagement_rule_makes_every_threshold_reachable() -> None:
    document = mutated(put("scoring", "mql", value={"enter": 10_000, "exit": 50}))
    document["scoring"]["tiers"] = {"hot": 20_000, "warm": 10_000}

    assert agreement_warnings(parse_agreement(document)) == []


# --------------------------------------------------------------------------- diff and storage


def test_diff_names_each_changed_rule_by_id() -> None:
    old = parse_agreement(EXAMPLE_DOC)

    def change(document: Doc) -> None:
        document["version"] = "2026.12-1"
        document["scoring"]["mql"]["enter"] = 65
        document["scoring"]["fit"][0]["points"] = 30
        document["scoring"]["fit"].pop(1)
        document["scoring"]["engagement"][PAGE_VIEW]["half_life"] = "2d"
        document["personas"].reverse()
        document["lifecycle"]["rejection_reasons"].append({"code": "duplicate", "outcome": "disqualify"})

    new = parse_agreement(mutated(change))

    # Sections in document-model order; within a section, entries in document order.
    assert sorted(str(c) for c in diff_agreements(old, new)) == sorted(
        [
            "~ version: 2026.11-1 -> 2026.12-1",
            "~ personas (order): [revenue-leader, ops-champion, technical-evaluator] -> "
            "[technical-evaluator, ops-champion, revenue-leader]",
            "~ scoring.fit[title-decision-maker].points: 25 -> 30",
            "- scoring.fit[title-practitioner]: {id: title-practitioner, field: title, match: "
            "{contains_any: [manager, lead, revops, operations]}, points: 10}",
            "~ scoring.engagement[page_view].half_life: 3d -> 2d",
            "~ scoring.mql.enter: 60 -> 65",
            "+ lifecycle.rejection_reasons[duplicate]: {code: duplicate, label: , outcome: disqualify}",
        ]
    )


def test_diff_of_an_agreement_with_itself_is_empty() -> None:
    agreement = parse_agreement(EXAMPLE_DOC)

    assert diff_agreements(agreement, agreement) == []
    assert Change("a.b", "changed", 1, 2).__str__() == "~ a.b: 1 -> 2"


@pytest.mark.parametrize(
    ("seconds", "text"), [(90, "90s"), (300, "5m"), (7200, "2h"), (14 * 86400, "14d"), (1.5, "1.5s")]
)
def test_durations_are_shown_as_people_write_them(seconds: float, text: str) -> None:
    assert human_duration(timedelta(seconds=seconds)) == text


def test_stored_document_loads_back_to_the_same_agreement_with_a_stable_digest() -> None:
    agreement = parse_agreement(EXAMPLE_DOC)
    document = normalised(agreement)

    assert parse_agreement(json.loads(json.dumps(document))) == agreement
    assert digest(document) == digest(normalised(parse_agreement(document)))
    assert digest(document) != digest(normalised(parse_agreement(mutated(put("name", value="Other")))))


def test_published_schema_is_generated_from_the_model_and_covers_the_new_sections() -> None:
    schema = agreement_schema()

    assert json.loads(AGREEMENT_SCHEMA_FILE.read_text(encoding="utf-8")) == schema
    assert {"personas", "lifecycle", "playbooks", "scoring", "routing", "sla"} <= set(schema["properties"])
    assert set(schema["$defs"]["Persona"]["properties"]["match"]["propertyNames"]["enum"]) == {
        "title",
        "seniority",
        "department",
    }
    assert "cap_per_window" in schema["$defs"]["EngagementRule"]["properties"]


# --------------------------------------------------------------------------- command line

runner = CliRunner()


def test_validate_prints_warnings_and_fails_only_when_strict(tmp_path: Path) -> None:
    document = mutated(put("scoring", "fit", 0, "match", value={"between": [1, 5]}))
    path = tmp_path / "agreement.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    relaxed = runner.invoke(app, ["agreement", "validate", str(path)])
    strict = runner.invoke(app, ["agreement", "validate", "--strict", str(path)])

    assert relaxed.exit_code == 0, relaxed.output
    assert f"{path}: warning: scoring.fit.0.match: rule 'title-decision-maker' can never fire" in relaxed.output
    assert "is valid (1 warning(s))" in relaxed.output
    assert strict.exit_code == 1


def test_validate_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(mutated(put("playbooks", 2, "persona", value="cfo"))), encoding="utf-8")

    result = runner.invoke(app, ["agreement", "validate", str(path)])

    assert result.exit_code == 1
    assert f"{path}: playbooks.2.persona: playbook 'mql-revenue-leader' names persona 'cfo'" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_says_a_negative_half_life_in_the_units_written(tmp_path: Path) -> None:
    document = mutated(put("scoring", "engagement", 0, "half_life", value=-3))
    path = tmp_path / "negative.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")

    result = runner.invoke(app, ["agreement", "validate", str(path)])

    assert result.exit_code == 1, result.output
    assert result.stderr == f"{path}: scoring.engagement.0: half_life must be positive, got -3 seconds\n"
    assert "day," not in result.output


def test_diff_command_lists_changes_and_exits_1(tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(mutated(put("scoring", "mql", "exit", value=40))), encoding="utf-8")

    changed = runner.invoke(app, ["agreement", "diff", str(EXAMPLE_PATH), str(new)])
    same = runner.invoke(app, ["agreement", "diff", str(EXAMPLE_PATH), str(EXAMPLE_PATH)])
    broken = runner.invoke(app, ["agreement", "diff", str(EXAMPLE_PATH), str(tmp_path / "missing.yaml")])

    assert changed.exit_code == 1
    assert "~ scoring.mql.exit: 45 -> 40" in changed.output
    assert same.exit_code == 0
    assert "are the same agreement" in same.output
    assert broken.exit_code == 1
    assert "missing.yaml: (file): cannot read" in broken.output
