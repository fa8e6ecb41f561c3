"""Scoring services as separate OS processes: how the demo and the integration tests run the fleet.

Each instance is `python -m consumers.<service>` configured by environment only, exactly as in
docker-compose.yml; readiness is its /readyz answering 200, never a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.errors import RidestreamError

STOP_TIMEOUT_S = 20.0


@dataclass
class ServiceProcess:
    service: str
    instance: int
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    @property
    def name(self) -> str:
        return f"{self.service}-{self.instance}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_or_free(preferred: int) -> int:
    """`preferred` when nothing listens there (the documented default), else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def start_http_service(
    name: str, command: list[str], port: int, bootstrap: str, log_dir: Path
) -> ServiceProcess:
    """`ridestream serve` or `ridestream backend` as a process on `port` (its /readyz is where wait_ready
    looks, like a scoring service's metrics port)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", *command, "--port", str(port), "-b", bootstrap],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return ServiceProcess(name, 1, process, port, log_path)


def service_environment(
    service: str, instance: int, bootstrap: str, models_dir: Path, metrics_port: int, extra: Mapping[str, str]
) -> dict[str, str]:
    prefix = service.upper() + "_"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        prefix + "MODELS_DIR": str(models_dir),
        prefix + "METRICS_PORT": str(metrics_port),
        # Stable across restarts of the same instance number: under exactly_once it names the
        # transactional.id, so a restarted instance fences the one it replaces.
        prefix + "INSTANCE_NAME": f"{service}-{instance}",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key if key.startswith(prefix) else prefix + key: value for key, value in extra.items()})
    return env


def start_service(
    service: str,
    instance: int,
    bootstrap: str,
    models_dir: Path,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{service}-{instance}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"consumers.{service}"],
            env=service_environment(
                service, instance, bootstrap, models_dir.resolve(), port, extra_env or {}
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl+C in the terminal reaches the demo, which stops us in order
        )
    return ServiceProcess(service, instance, process, port, log_path)


def is_ready(instance: ServiceProcess) -> bool:
    try:
        with urllib.request.urlopen(instance.url("/readyz"), timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_ready(instances: list[ServiceProcess], timeout_s: float = 60.0) -> None:
    """Until every instance reports ready (partitions assigned); a dead one fails fast with its log."""
    deadline = time.monotonic() + timeout_s
    waiting = list(instances)
    while waiting:
        for instance in list(waiting):
            if instance.process.poll() is not None:
                raise RidestreamError(
                    f"{instance.name} exited with {instance.process.returncode}:\n{instance.log_tail()}"
                )
            if is_ready(instance):
                waiting.remove(instance)
        if waiting and time.monotonic() > deadline:
            raise RidestreamError(f"not ready after {timeout_s:.0f}s: {', '.join(i.name for i in waiting)}")
        time.sleep(0.2)  # poll interval between readiness requests


def stop_service(
    instance: ServiceProcess, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S
) -> int:
    """Signal the instance and wait; SIGKILL if it does not finish in time. Returns the exit code."""
    if instance.process.poll() is None:
        instance.process.send_signal(sig)
        try:
            instance.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            instance.process.wait()
    return int(instance.process.returncode)


@contextmanager
def running_fleet(
    counts: Mapping[str, int],
    bootstrap: str,
    models_dir: Path,
    log_dir: Path,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[list[ServiceProcess]]:
    """Start `counts[service]` instances of each service; stop them all (no orphans) on the way out.

    `extra_env[service]` adds settings for that service's instances (names without the service prefix work).
    """
    instances: list[ServiceProcess] = []
    try:
        for service, count in counts.items():
            for index in range(count):
                env = (extra_env or {}).get(service, {})
                instances.append(start_service(service, index + 1, bootstrap, models_dir, log_dir, env))
        yield instances
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        for instance in instances:
            stop_service(instance)
