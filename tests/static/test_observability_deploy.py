"""Alert rules, the Grafana dashboard, the Prometheus scrape config, the compose file and the
Kubernetes manifests must agree with the code: every metric they reference is exported, every
command they run exists, every setting they pass is read, every topic is defined."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from typer.testing import CliRunner

from coxswain.runtime import metrics  # noqa: F401  (registers the shared metrics)
from coxswain.runtime.kafka import all_topics
from coxswain.settings import environment_variable_names
from coxswain_app.cli import app
from tests.static.test_deploy_files import COMPOSE, cli_command

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
GRAFANA = json.loads((DEPLOY / "grafana" / "coxswain.json").read_text())
K8S = {
    path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
}
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text()
METRIC = re.compile(r"\b(coxswain_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def exported_metrics() -> set[str]:
    """Every sample name the processes can expose: the shared runtime's (with scoring's, which
    registers there on import) and the SLA monitor's."""
    import services.scoring.metrics  # noqa: F401

    registries = [REGISTRY]
    try:
        from services.sla_monitor.metrics import SlaMetrics
    except ImportError:
        pass
    else:
        registries.append(SlaMetrics(CollectorRegistry()).registry)
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
            names.update(sample.name for sample in family.samples)
    return names


def rules() -> list[dict[str, Any]]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


def scrape_jobs() -> dict[str, list[str]]:
    return {job["job_name"]: job["static_configs"][0]["targets"] for job in PROMETHEUS["scrape_configs"]}


def test_every_metric_an_alert_rule_uses_is_exported() -> None:
    exported = exported_metrics()
    assert rules(), "no alert rules"
    for rule in rules():
        used = set(METRIC.findall(rule["expr"]))
        assert used or "up{" in rule["expr"], f"{rule['alert']}: references no metric"
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} are not exported by any service"


def test_every_alert_names_a_severity_and_a_runbook_entry_that_exists() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", RUNBOOK, re.MULTILINE)
    }
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, f"docs/runbook.md has no section for {rule['alert']}"


def test_alert_rules_only_name_jobs_that_prometheus_scrapes() -> None:
    jobs = set(scrape_jobs())
    for rule in rules():
        for pattern in re.findall(r'job=~?"([^"]+)"', rule["expr"]):
            assert any(re.fullmatch(pattern, job) for job in jobs), f"{rule['alert']}: no scrape job matches {pattern}"


def test_every_metric_of_the_grafana_dashboard_is_exported() -> None:
    exported = exported_metrics()
    assert GRAFANA["uid"] == "coxswain"
    expressions = [target["expr"] for panel in GRAFANA["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    for expr in expressions:
        used = set(METRIC.findall(expr))
        assert used <= exported, f"{expr}: {sorted(used - exported)} are not exported"
    ids = [panel["id"] for panel in GRAFANA["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_scrapes_each_service_where_it_serves_metrics() -> None:
    services = COMPOSE["services"]
    expected_ports = {
        "intake": services["intake"]["environment"]["COXSWAIN_INTAKE_PORT"],
        "reporting": services["reporting"]["environment"]["COXSWAIN_REPORTING_PORT"],
    }
    for name in ("scoring", "router", "sla-monitor"):
        expected_ports[name] = services[name]["environment"]["COXSWAIN_METRICS_PORT"]
    scraped = {}
    for job, targets in scrape_jobs().items():
        host, port = targets[0].split(":")
        assert job == f"coxswain-{host}", job
        scraped[host] = port
    assert scraped == expected_ports


def test_the_observability_profile_mounts_files_that_exist() -> None:
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name}: {source} does not exist"
    assert "reporting" in services and services["reporting"]["command"] == ["run", "reporting"]


def containers(*kinds: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for documents in K8S.values():
        for doc in documents:
            if doc["kind"] in kinds:
                spec = doc["spec"]["template"]["spec"]
                found.extend((doc["metadata"]["name"], container, doc) for container in spec["containers"])
    return found


def test_every_kubernetes_container_runs_an_existing_cli_command() -> None:
    deployments = containers("Deployment", "StatefulSet")
    names = {name for name, _, _ in deployments}
    assert {f"coxswain-{s}" for s in ("intake", "scoring", "router", "sla-monitor", "reporting")} <= names
    for name, container, _ in [*deployments, *containers("Job")]:
        command = cli_command(container["args"])
        assert command is not None and command.callback is not None, f"{name}: coxswain {container['args']}"
    assert any(c["args"] == ["db", "upgrade"] for _, c, _ in containers("Job")), "no migration Job"


def test_every_kubernetes_setting_is_read_by_the_code() -> None:
    known = environment_variable_names()
    for documents in K8S.values():
        for doc in documents:
            if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"].startswith("coxswain-"):
                data = doc.get("data") or doc.get("stringData") or {}
                if doc["metadata"]["name"] != "coxswain-agreement":
                    assert set(data) <= known, f"{doc['metadata']['name']}: {sorted(set(data) - known)}"
    for name, container, _ in containers("Deployment", "StatefulSet"):
        variables = {entry["name"] for entry in container.get("env", [])}
        assert variables <= known, f"{name}: {sorted(variables - known)}"


def test_every_deployment_has_probes_resources_and_a_scrape_port_it_serves() -> None:
    for name, container, deployment in containers("Deployment", "StatefulSet"):
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ports, f"{name}: {probe} names an unknown port"
        assert {"requests", "limits"} <= set(container["resources"]), name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        if annotations["prometheus.io/scrape"] != "true":
            continue
        env = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
        served = {env.get(var) for var in ("COXSWAIN_METRICS_PORT", "COXSWAIN_INTAKE_PORT", "COXSWAIN_REPORTING_PORT")}
        assert annotations["prometheus.io/port"] in served, f"{name}: scrapes a port nothing serves"
        assert int(annotations["prometheus.io/port"]) in ports.values(), name


def test_topic_definitions_cover_every_topic_and_its_dead_letter_topic() -> None:
    defined = {doc["spec"]["topicName"]: doc["spec"] for doc in K8S["topics.yaml"] if doc["kind"] == "KafkaTopic"}
    assert set(defined) == set(all_topics()), "regenerate with `coxswain topics manifest > deploy/k8s/topics.yaml`"
    for topic, spec in defined.items():
        assert spec["partitions"] >= 1 and spec["config"]["retention.ms"] > 0, topic
        if not topic.endswith(".dlq"):
            assert f"{topic}.dlq" in defined
    # The manifest is for production's defaults, not the 3 partitions the test infrastructure puts
    # in this process's environment once an earlier test has started it.
    manifest = CliRunner().invoke(app, ["topics", "manifest"], env={"COXSWAIN_KAFKA_TOPIC_PARTITIONS": None})
    generated = [doc for doc in yaml.safe_load_all(manifest.stdout) if doc]
    assert generated == K8S["topics.yaml"]


def test_the_kustomization_lists_files_that_exist() -> None:
    [kustomization] = K8S["kustomization.yaml"]
    for resource in kustomization["resources"]:
        assert resource in K8S, resource


def test_every_kafka_consumer_runs_as_a_statefulset_named_for_its_static_membership() -> None:
    """A pod's name survives its restarts only in a StatefulSet; as the static member id it lets a
    restarted consumer take its partitions back without waiting for the old session to expire."""
    consumers = {"coxswain-scoring", "coxswain-router", "coxswain-sla-monitor", "coxswain-crm-sync-hubspot"}
    services = {doc["metadata"]["name"]: doc for docs in K8S.values() for doc in docs if doc["kind"] == "Service"}
    stateful = {name: (container, doc) for name, container, doc in containers("StatefulSet")}
    assert set(stateful) == consumers
    for name, (container, doc) in stateful.items():
        instance = [entry for entry in container["env"] if entry["name"] == "COXSWAIN_KAFKA_INSTANCE_ID"]
        assert instance == [
            {"name": "COXSWAIN_KAFKA_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        ], name
        assert services[doc["spec"]["serviceName"]]["spec"]["clusterIP"] == "None", name
