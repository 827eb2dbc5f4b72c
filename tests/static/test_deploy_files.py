"""The compose file, the local scripts and the CLI must agree with each other and with the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main
import yaml

from coxswain.contracts import write_documents
from coxswain.runtime import tracing
from coxswain.settings import environment_variable_names
from coxswain_app.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def cli_command(words: list[str]) -> Any:
    command: Any = typer.main.get_command(app)
    for word in words:
        if word.startswith("-"):
            break
        subcommands = getattr(command, "commands", None)
        if subcommands is None or word not in subcommands:
            return None
        command = subcommands[word]
    return command


def option_envvars(command: Any) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar: Any = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def coxswain_services() -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in COMPOSE["services"].items() if spec.get("image") == "coxswain:local"}


def test_every_coxswain_service_runs_an_existing_cli_command() -> None:
    services = coxswain_services()
    assert {"migrate", "topics", "intake", "scoring", "router", "sla-monitor"} <= set(services)
    for name, spec in services.items():
        command = cli_command(spec["command"])
        assert command is not None, f"{name}: `coxswain {' '.join(spec['command'])}` is not a CLI command"
        assert command.callback is not None, f"{name}: {spec['command']} names a group, not a command"


def test_every_environment_variable_is_a_setting_the_code_reads() -> None:
    for name, spec in coxswain_services().items():
        command = cli_command(spec["command"])
        assert command is not None
        known = environment_variable_names() | option_envvars(command) | tracing.STANDARD_VARIABLES
        unknown = {var for var in spec["environment"] if var not in known}
        assert not unknown, f"{name}: {sorted(unknown)} are not read by the code"


def test_compose_uses_the_kafka_version_of_the_local_scripts() -> None:
    script = (ROOT / "deploy" / "local" / "kafka.sh").read_text()
    match = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([0-9.]+)\}"', script)
    assert match is not None
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{match.group(1)}"


def test_services_start_only_after_migrations_and_topics() -> None:
    for name in ("intake", "scoring", "router", "sla-monitor"):
        depends = COMPOSE["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["topics"]["condition"] == "service_completed_successfully", name


def test_published_contracts_match_the_event_models() -> None:
    assert write_documents(check=True) == [], "run `coxswain schemas generate` and commit the result"
