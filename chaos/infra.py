"""The chaos run's own stack, driven only through the project's process interface.

Kafka and PostgreSQL come from ``deploy/local/{stack,kafka,postgres}.sh`` with their own ports
and state dir; schema and topics from ``coxswain db upgrade`` / ``coxswain topics create``;
every service is ``coxswain run <service>`` in its own OS process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "deploy" / "local"
SERVICES = ("intake", "scoring", "router", "sla-monitor")
INFRA_ERROR_LINES = 20


class InfraError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    base: int

    @property
    def kafka(self) -> int:
        return self.base + 92

    @property
    def kafka_controller(self) -> int:
        return self.base + 93

    @property
    def postgres(self) -> int:
        return self.base + 432

    @property
    def intake(self) -> int:
        return self.base + 80


@dataclass
class Infra:
    state_dir: Path
    ports: Ports
    agreement: Path
    webhook_secret: str
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = self.state_dir / "logs"

    @property
    def database_url(self) -> str:
        return f"postgresql+asyncpg://coxswain:coxswain@127.0.0.1:{self.ports.postgres}/coxswain"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def intake_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.intake}"

    def script_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COXSWAIN_STATE_DIR": str(self.state_dir),
            "KAFKA_PORT": str(self.ports.kafka),
            "KAFKA_CONTROLLER_PORT": str(self.ports.kafka_controller),
            "PG_PORT": str(self.ports.postgres),
        }

    def service_env(self) -> dict[str, str]:
        secrets = orjson.dumps({"webform": self.webhook_secret, "crm": self.webhook_secret}).decode()
        return {
            **os.environ,
            "COXSWAIN_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "COXSWAIN_KAFKA_SESSION_TIMEOUT_MS": "1500",
            "COXSWAIN_DATABASE_URL": self.database_url,
            "COXSWAIN_KAFKA_TOPIC_PARTITIONS": "3",
            "COXSWAIN_AGREEMENT_FILE": str(self.agreement),
            "COXSWAIN_WEBHOOK_SECRETS": secrets,
            "COXSWAIN_INTAKE_PORT": str(self.ports.intake),
            "COXSWAIN_SLA_MAX_SLEEP_SECONDS": "0.2",
        }

    async def _run(self, argv: list[str], env: dict[str, str], what: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / "infra.log"
        with path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            start = log.tell()
            process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            code = await process.wait()
        if code != 0:
            # The script's own words say why (a port taken, a broker that would not start); a CI log
            # may be all that is left of the run, so they go into the error, not only into the file.
            with path.open("rb") as log:
                log.seek(start)
                said = log.read().decode(errors="replace").strip().splitlines()[-INFRA_ERROR_LINES:]
            reason = "".join(f"\n  {line}" for line in said)
            raise InfraError(f"{what} failed with exit code {code}; see {path}{reason}")

    async def script(self, name: str, *args: str) -> None:
        await self._run([str(LOCAL / name), *args], self.script_env(), f"{name} {' '.join(args)}")

    async def cli(self, *args: str) -> None:
        await self._run([sys.executable, "-m", "coxswain_app", *args], self.service_env(), f"coxswain {' '.join(args)}")

    async def fresh(self) -> None:
        """Stop whatever a previous run left, wipe broker and database state (not the jar cache), start clean."""
        await self.script("stack.sh", "down")
        shutil.rmtree(self.state_dir / "kafka" / "data", ignore_errors=True)
        shutil.rmtree(self.state_dir / "postgres", ignore_errors=True)
        shutil.rmtree(self.state_dir / "pitr", ignore_errors=True)  # WAL of a cluster that is gone
        shutil.rmtree(self.log_dir, ignore_errors=True)
        await self.script("stack.sh", "up")
        await self.cli("db", "upgrade")
        await self.cli("topics", "create")

    async def down(self) -> None:
        await self.script("stack.sh", "down")

    def kafka_pid(self) -> int | None:
        try:
            return int((self.state_dir / "kafka" / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    async def kill_kafka(self) -> None:
        """SIGKILL the broker JVM: no controlled shutdown, no flush beyond what the OS already has."""
        pid = self.kafka_pid()
        if pid is None:
            raise InfraError("kafka pid file missing; is the broker running?")
        os.kill(pid, signal.SIGKILL)
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.1)
        raise InfraError(f"kafka pid {pid} survived SIGKILL for 30 s")

    async def start_kafka(self) -> None:
        await self.script("kafka.sh", "start")

    async def stop_postgres(self) -> None:
        await self.script("postgres.sh", "stop")

    async def start_postgres(self) -> None:
        await self.script("postgres.sh", "start")


@dataclass
class ServiceProcess:
    """One ``coxswain run <name>`` process; each (re)start logs to its own file."""

    name: str
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed_by_us: bool = False

    def log_path(self, start: int) -> Path:
        return self.log_dir / f"{self.name}.{start}.log"

    def log_paths(self) -> list[Path]:
        return [self.log_path(n) for n in range(1, self.starts + 1)]

    def start(self) -> None:
        self.starts += 1
        self.killed_by_us = False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(self.starts).open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coxswain_app", "run", self.name],
                # Restarted under the same name, as a StatefulSet pod is: the group's static member.
                env={**self.env, "COXSWAIN_KAFKA_INSTANCE_ID": f"chaos-{self.name}"},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def exited(self) -> int | None:
        """The exit code if the process ended without us killing it."""
        if self.process is None or self.killed_by_us:
            return None
        return self.process.poll()

    def kill(self) -> None:
        assert self.process is not None
        self.killed_by_us = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        self.killed_by_us = True
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
