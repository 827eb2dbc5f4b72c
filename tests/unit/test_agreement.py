"""The agreement loader: the example loads, and every malformed document gets a precise, located problem."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coxswain.core.agreement import (
    Agreement,
    AgreementError,
    AgreementProblem,
    load_agreement,
    load_agreement_text,
    parse_agreement,
    parse_duration,
    spoken_duration,
)
from coxswain.core.scoring import matches
from schemas.events import ActivityType, EngagementType, Tier

EXAMPLE_PATH = Path(__file__).resolve().parents[2] / "examples" / "agreement.yaml"
EXAMPLE_TEXT = EXAMPLE_PATH.read_text(encoding="utf-8")
EXAMPLE_DOC: dict[str, Any] = yaml.safe_load(EXAMPLE_TEXT)

Doc = dict[str, Any]


def mutated(mutate: Callable[[Doc], object]) -> Doc:
    document = copy.deepcopy(EXAMPLE_DOC)
    mutate(document)
    return document


def problems_of(document: object) -> tuple[AgreementProblem, ...]:
    with pytest.raises(AgreementError) as caught:
        parse_agreement(document, source="agreement.yaml")
    assert caught.value.problems, "an AgreementError must carry at least one problem"
    return caught.value.problems


# --------------------------------------------------------------------------- the example


def test_example_agreement_loads_with_its_sections() -> None:
    agreement = load_agreement(EXAMPLE_PATH)

    assert agreement.version == "2026.11-1"
    assert agreement.name == "Northwind Analytics sales-marketing SLA"
    assert [rule.id for rule in agreement.scoring.fit] == [
        "title-decision-maker",
        "title-practitioner",
        "size-mid-market",
        "size-enterprise",
        "industry-target",
        "country-served",
        "persona-revenue-leader",
    ]
    assert [rule.id for rule in agreement.scoring.negative] == ["student", "free-mail", "competitor"]
    assert all(rule.points < 0 for rule in agreement.scoring.negative)
    demo = next(rule for rule in agreement.scoring.engagement if rule.event is EngagementType.demo_request)
    assert demo.points == 40
    assert demo.half_life == timedelta(days=14)
    assert demo.cap is None
    assert (agreement.scoring.mql.enter, agreement.scoring.mql.exit) == (60, 45)
    assert (agreement.scoring.tiers.hot, agreement.scoring.tiers.warm) == (80, 60)
    assert [rep.id for rep in agreement.roster] == ["ava", "ben", "chloe", "dan", "eli"]
    assert agreement.routing.fallback_pool == "inbound-queue"
    assert [(m.rep, m.weight) for m in agreement.pool("north-america").members] == [("ava", 2), ("ben", 1), ("eli", 1)]
    assert agreement.sla.policies[Tier.hot].first_touch == timedelta(minutes=5)
    assert agreement.sla.policies[Tier.warm].first_touch == timedelta(hours=1)
    assert agreement.sla.policies[Tier.cold].first_touch == timedelta(hours=4)
    assert ActivityType.automated_email not in agreement.sla.policies[Tier.hot].responses


def test_text_and_parsed_document_load_the_same_agreement() -> None:
    assert load_agreement_text(EXAMPLE_TEXT) == parse_agreement(EXAMPLE_DOC) == load_agreement(EXAMPLE_PATH)


def test_agreement_is_immutable() -> None:
    agreement = parse_agreement(EXAMPLE_DOC)
    with pytest.raises(ValueError, match="frozen"):
        agreement.version = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        (" 2h ", timedelta(hours=2)),
        ("1.5d", timedelta(hours=36)),
        ("1w", timedelta(days=7)),
    ],
)
def test_human_durations_are_understood(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_numeric_equals_matches_whole_numbers() -> None:
    """Regression: `equals: 50` loads as 50.0 and used to be compared as the text "50.0"."""
    document = mutated(
        lambda d: d["scoring"]["fit"].append(
            {"id": "size-exactly-50", "field": "company_size", "match": {"equals": 50}, "points": 1}
        )
    )
    rule = parse_agreement(document).scoring.fit[-1]
    assert matches(rule.match, 50)
    assert not matches(rule.match, 51)
    assert not matches(rule.match, None)


# --------------------------------------------------------------------------- malformed documents


def _set(*path: str | int, value: object) -> Callable[[Doc], None]:
    def mutate(document: Doc) -> None:
        target: Any = document
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _delete(*path: str | int) -> Callable[[Doc], None]:
    def mutate(document: Doc) -> None:
        target: Any = document
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return mutate


def _append(*path: str | int, value: object) -> Callable[[Doc], None]:
    def mutate(document: Doc) -> None:
        target: Any = document
        for part in path:
            target = target[part]
        target.append(value)

    return mutate


MALFORMED: list[tuple[str, Callable[[Doc], None], str, str]] = [
    ("unknown top-level key", _set("colour", value="red"), "colour", "unknown key; check the spelling"),
    (
        "unknown nested key",
        _set("scoring", "fit", 0, "weight", value=3),
        "scoring.fit.0.weight",
        "unknown key",
    ),
    ("missing section", _delete("sla"), "sla", "Field required"),
    ("missing mql", _delete("scoring", "mql"), "scoring.mql", "Field required"),
    (
        "match with two tests",
        _set("scoring", "fit", 0, "match", value={"contains_any": ["vp"], "equals": "cto"}),
        "scoring.fit.0.match",
        "a match needs exactly one test, got 2 (equals, contains_any)",
    ),
    (
        "match with no test",
        _set("scoring", "fit", 1, "match", value={}),
        "scoring.fit.1.match",
        "a match needs exactly one test, got 0 (none)",
    ),
    (
        "between reversed",
        _set("scoring", "fit", 2, "match", value={"between": [5000, 50]}),
        "scoring.fit.2.match",
        "lower bound 5000.0 is above upper bound 50.0",
    ),
    (
        "between of text",
        _set("scoring", "fit", 2, "match", value={"between": ["small", "large"]}),
        "scoring.fit.2.match.between.0",
        "valid number",
    ),
    (
        "exit above enter",
        _set("scoring", "mql", value={"enter": 60, "exit": 70}),
        "scoring.mql",
        "exit (70.0) must not be above enter (60.0), or leads would flap",
    ),
    (
        "NaN entry threshold",
        _set("scoring", "mql", "enter", value=float("nan")),
        "scoring.mql.enter",
        "finite number",
    ),
    (
        "warm above hot",
        _set("scoring", "tiers", value={"hot": 60, "warm": 80}),
        "scoring.tiers",
        "warm (80.0) must not be above hot (60.0)",
    ),
    (
        "negative rule with positive points",
        _set("scoring", "negative", 0, "points", value=50),
        "scoring.negative.0.points",
        "less than 0",
    ),
    (
        "fit rule with negative points",
        _set("scoring", "fit", 0, "points", value=-5),
        "scoring.fit.0.points",
        "greater than 0",
    ),
    (
        "fit rule on an unknown field",
        _set("scoring", "fit", 0, "field", value="shoe_size"),
        "scoring.fit.0.field",
        "got 'shoe_size'; allowed: 'campaign'",
    ),
    (
        "unknown engagement event",
        _set("scoring", "engagement", 0, "event", value="telepathy"),
        "scoring.engagement.0.event",
        "got 'telepathy'; allowed: 'form_submit'",
    ),
    (
        "bad duration string",
        _set("scoring", "engagement", 1, "half_life", value="two weeks"),
        "scoring.engagement.1.half_life",
        "valid timedelta",
    ),
    (
        "duration too long",
        _set("scoring", "engagement", 1, "half_life", value="99999999999999999999d"),
        "scoring.engagement.1.half_life",
        "duration '99999999999999999999d' is too long",
    ),
    (
        "zero half_life",
        _set("scoring", "engagement", 2, "half_life", value="0d"),
        "scoring.engagement.2",
        "half_life must be positive, got 0 seconds",
    ),
    (
        "negative half_life written as a bare number (seconds)",
        _set("scoring", "engagement", 2, "half_life", value=-3),
        "scoring.engagement.2",
        "half_life must be positive, got -3 seconds",
    ),
    (
        "zero cap",
        _set("scoring", "engagement", 1, "cap", value=0),
        "scoring.engagement.1.cap",
        "greater than 0",
    ),
    (
        "fast lane to unknown tier",
        _set("scoring", "fast_lanes", 0, "tier", value="boiling"),
        "scoring.fast_lanes.0.tier",
        "got 'boiling'; allowed: 'hot', 'warm' or 'cold'",
    ),
    (
        "pool naming a rep not in the roster",
        _append("routing", "pools", 1, "members", value={"rep": "zoe"}),
        "routing.pools.1.members.2.rep",
        "pool 'emea' names rep 'zoe', who is not in the roster",
    ),
    (
        "rep listed twice in a pool",
        _append("routing", "pools", 1, "members", value={"rep": "dan", "weight": 3}),
        "routing.pools.1.members.2.rep",
        "pool 'emea' members: id 'dan' is used more than once",
    ),
    (
        "routing rule to an unknown pool",
        _set("routing", "rules", 0, "pool", value="apac"),
        "routing.rules.0.pool",
        "routing rule 'emea' sends leads to unknown pool 'apac'",
    ),
    (
        "unknown fallback pool",
        _set("routing", "fallback_pool", value="nowhere"),
        "routing.fallback_pool",
        "fallback_pool 'nowhere' is not a defined pool",
    ),
    (
        "duplicate rep ids",
        _append("roster", value={"id": "ava", "name": "Ava Again"}),
        "roster.5.id",
        "roster: id 'ava' is used more than once",
    ),
    (
        "duplicate pool ids",
        _append("routing", "pools", value={"id": "emea", "members": [{"rep": "dan"}]}),
        "routing.pools.3.id",
        "routing.pools: id 'emea' is used more than once",
    ),
    (
        "duplicate scoring rule ids across fit and negative",
        _set("scoring", "negative", 1, "id", value="industry-target"),
        "scoring.negative.1.id",
        "scoring rule ids: id 'industry-target' is used more than once",
    ),
    (
        "duplicate routing rule ids",
        _set("routing", "rules", 1, "id", value="emea"),
        "routing.rules.1.id",
        "routing.rules: id 'emea' is used more than once",
    ),
    (
        "routing when on an unknown attribute",
        _set("routing", "rules", 0, "when", value={"shoe_size": ["42"]}),
        "routing.rules.0",
        "unknown attribute(s) shoe_size in when; allowed:",
    ),
    (
        "routing when with a scalar instead of a list",
        _set("routing", "rules", 1, "when", value={"country": "US"}),
        "routing.rules.1.when.country",
        "valid tuple",
    ),
    (
        "SLA missing a tier",
        _delete("sla", "policies", "cold"),
        "sla",
        "no SLA policy for tier(s) cold; every tier needs one",
    ),
    (
        "SLA policy for an unknown tier",
        _set("sla", "policies", "lukewarm", value={"first_touch": "1h"}),
        "sla.policies.lukewarm.[key]",
        "got 'lukewarm'; allowed: 'hot', 'warm' or 'cold'",
    ),
    (
        "automated_email counted as a response",
        _set("sla", "policies", "hot", "responses", value=["first_touch", "automated_email"]),
        "sla.policies.hot",
        "automated_email cannot count as a response",
    ),
    (
        "zero first-touch window",
        _set("sla", "policies", "warm", "first_touch", value="0s"),
        "sla.policies.warm",
        "first_touch must be positive",
    ),
    (
        "unknown sla calendar",
        _set("sla", "calendar", value="business"),
        "sla.calendar",
        "unknown calendar 'business'; allowed: 24x7",
    ),
    (
        "weight 0",
        _set("routing", "pools", 0, "members", 0, "weight", value=0),
        "routing.pools.0.members.0.weight",
        "greater than or equal to 1",
    ),
    (
        "bad identifier characters",
        _set("roster", 0, "id", value="Ava Jensen"),
        "roster.0.id",
        "should match pattern",
    ),
    ("empty roster", _set("roster", value=[]), "roster", "at least 1 item"),
    ("pool without members", _set("routing", "pools", 2, "members", value=[]), "routing.pools.2.members", "at least 1"),
    ("no pools", _set("routing", "pools", value=[]), "routing.pools", "at least 1 item"),
    ("empty version", _set("version", value=""), "version", "at least 1 character"),
    ("version as a number", _set("version", value=7), "version", "valid string"),
    ("section of the wrong shape", _set("scoring", value=[1, 2]), "scoring", "valid dictionary"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [pytest.param(mutate, path, fragment, id=name) for name, mutate, path, fragment in MALFORMED],
)
def test_malformed_agreement_names_path_and_problem(mutate: Callable[[Doc], None], path: str, fragment: str) -> None:
    problems = problems_of(mutated(mutate))

    located = [problem for problem in problems if problem.path == path]
    assert located, f"no problem at {path}; got {[str(p) for p in problems]}"
    assert any(fragment in problem.message for problem in located), [str(p) for p in located]


def test_malformed_cases_are_distinct() -> None:
    assert len(MALFORMED) >= 20
    assert len({(path, fragment) for _, _, path, fragment in MALFORMED}) == len(MALFORMED)
    assert len({name for name, *_ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (timedelta(seconds=-3), "-3 seconds"),
        (timedelta(0), "0 seconds"),
        (timedelta(seconds=1), "1 second"),
        (timedelta(seconds=-0.25), "-0.25 seconds"),
        (timedelta(minutes=-90), "-90 minutes"),
        (timedelta(hours=-2), "-2 hours"),
        (timedelta(days=-1), "-1 day"),
        (timedelta(weeks=2), "2 weeks"),
        (timedelta(days=14, seconds=1), "1209601 seconds"),
    ],
)
def test_durations_in_problems_are_said_in_the_units_people_write(value: timedelta, said: str) -> None:
    assert spoken_duration(value) == said


def test_every_problem_is_reported_not_only_the_first() -> None:
    def several(document: Doc) -> None:
        document["routing"]["fallback_pool"] = "nowhere"
        document["routing"]["rules"][0]["pool"] = "apac"
        document["roster"].append({"id": "ben", "name": "Ben Two"})

    paths = {problem.path for problem in problems_of(mutated(several))}

    assert paths == {"routing.fallback_pool", "routing.rules.0.pool", "roster.5.id"}


def test_error_text_names_source_path_and_message() -> None:
    with pytest.raises(AgreementError) as caught:
        parse_agreement(mutated(_set("routing", "fallback_pool", value="nowhere")), source="northwind.yaml")

    assert str(caught.value) == "northwind.yaml: routing.fallback_pool: fallback_pool 'nowhere' is not a defined pool"
    assert caught.value.source == "northwind.yaml"


def test_invalid_yaml_syntax_reports_line_and_column() -> None:
    broken = EXAMPLE_TEXT.replace('version: "2026.11-1"', 'version: ["2026.11-1"', 1)

    with pytest.raises(AgreementError) as caught:
        load_agreement_text(broken, source="northwind.yaml")

    (problem,) = caught.value.problems
    assert problem.path.startswith("line ")
    assert ", column " in problem.path
    assert "not valid YAML" in problem.message


def test_a_nul_character_anywhere_is_refused_before_it_could_reach_the_database() -> None:
    with_nul = EXAMPLE_TEXT.replace("name: Northwind Analytics sales-marketing SLA", 'name: "North\\0wind"', 1)
    assert with_nul != EXAMPLE_TEXT

    with pytest.raises(AgreementError) as caught:
        load_agreement_text(with_nul, source="northwind.yaml")

    (problem,) = caught.value.problems
    assert problem.path == "(document)"
    assert "NUL" in problem.message


def test_yaml_error_line_number_points_at_the_broken_line() -> None:
    text = "version: x\nname: y\nscoring: {\n  mql: [1, 2\n"

    with pytest.raises(AgreementError) as caught:
        load_agreement_text(text)

    (problem,) = caught.value.problems
    assert problem.path == "line 5, column 1"
    assert "not valid YAML" in problem.message


@pytest.mark.parametrize("text", ["- version\n- name\n", "just a sentence", "", "42", "null"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    with pytest.raises(AgreementError) as caught:
        load_agreement_text(text)

    (problem,) = caught.value.problems
    assert problem.path == "(root)"
    assert "expected a mapping of sections" in problem.message


def test_python_object_tags_are_refused_not_constructed() -> None:
    with pytest.raises(AgreementError) as caught:
        load_agreement_text("version: !!python/object/apply:os.getcwd []\n")

    assert "could not determine a constructor" in caught.value.problems[0].message


def test_unreadable_file_is_an_agreement_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"

    with pytest.raises(AgreementError) as caught:
        load_agreement(missing)

    (problem,) = caught.value.problems
    assert problem.path == "(file)"
    assert "cannot read" in problem.message
    assert caught.value.source == str(missing)


# --------------------------------------------------------------------------- fuzzing

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["5m", "0s", "-3d", "99999999999999999999w", "hot", "ava", "emea", "P1D", "1e9d", "24x7"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(sorted(EXAMPLE_DOC))), children, max_size=4),
    ),
    max_leaves=20,
)


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


EXAMPLE_PATHS = _paths(EXAMPLE_DOC)


def _parse_or_agreement_error(document: object) -> None:
    try:
        agreement = parse_agreement(document)
    except AgreementError as exc:
        assert exc.problems
        assert all(problem.path and problem.message for problem in exc.problems)
    else:
        assert isinstance(agreement, Agreement)


@settings(max_examples=150, deadline=None)
@given(documents)
def test_arbitrary_documents_only_ever_raise_agreement_error(document: object) -> None:
    _parse_or_agreement_error(document)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mutations_of_the_example_only_ever_raise_agreement_error(data: st.DataObject) -> None:
    document = copy.deepcopy(EXAMPLE_DOC)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        paths = _paths(document)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = document
        for part in path[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "add-key", "duplicate"]), label="action")
        if action == "replace":
            parent[path[-1]] = data.draw(documents, label="value")
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add-key" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8), label="key")] = data.draw(scalars, label="value")
        elif action == "duplicate" and isinstance(parent, list) and isinstance(path[-1], int):
            parent.append(copy.deepcopy(parent[path[-1]]))
    _parse_or_agreement_error(document)


def _load_text_or_agreement_error(text: str) -> None:
    try:
        load_agreement_text(text)
    except AgreementError as exc:
        assert exc.problems


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_only_ever_raises_agreement_error(text: str) -> None:
    _load_text_or_agreement_error(text)


@settings(max_examples=80, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(EXAMPLE_TEXT)),
    cut=st.integers(min_value=0, max_value=20),
    insert=st.text(alphabet=st.sampled_from(list(" \t\n:-[]{},'\"#&*!|>%@`?xy0")), max_size=5),
)
def test_example_text_with_random_edits_only_ever_raises_agreement_error(position: int, cut: int, insert: str) -> None:
    _load_text_or_agreement_error(EXAMPLE_TEXT[:position] + insert + EXAMPLE_TEXT[position + cut :])


@settings(max_examples=100, deadline=None)
@given(documents)
def test_dumped_documents_only_ever_raise_agreement_error(document: object) -> None:
    _load_text_or_agreement_error(yaml.safe_dump(document))
