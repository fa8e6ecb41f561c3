"""`ridestream broker up | status | down | fetch`: a local Apache Kafka broker that outlives the command.

`up` prints only the bootstrap address on stdout, so scripts can do
`export KAFKA_BOOTSTRAP_SERVERS=$(ridestream broker up)`; everything meant for a person goes to stderr.
Failures are BrokerError lines (see stack/cli.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from shared.errors import BrokerError
from stack.broker import (
    KAFKA_VERSION,
    LocalKafka,
    clear_state,
    ensure_kafka_jars,
    find_java,
    load_state,
    running_broker,
    state_path,
    write_state,
)
from stack.security import SCRAM_MECHANISM

broker_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _describe(kafka: LocalKafka) -> str:
    alive, total = len(kafka.pids()), kafka.node_count
    nodes = f"{total} node{'s' if total > 1 else ''}" if alive == total else f"{alive} of {total} nodes alive"
    return f"{kafka.bootstrap_servers} ({nodes}, data in {kafka.data_dir})"


def _describe_security(kafka: LocalKafka) -> str:
    """The principals and where their settings are: never a password (those stay in the state file and
    the owner-only password files)."""
    secure = kafka.secure
    if secure is None:
        return "security: none (PLAINTEXT, no ACLs)"
    lines = [
        f"security: SASL_SSL with {SCRAM_MECHANISM}, ACLs (StandardAuthorizer, deny when no ACL matches)",
        f"  CA certificate: {secure.tls.ca_location}",
        "  principals (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE):",
        *(f"    {user:<10} {secure.password_file(user)}" for user in secure.principals),
    ]
    return "\n".join(lines)


@broker_app.command()
def up(
    nodes: Annotated[
        int, typer.Option(min=1, max=5, help="combined broker+controller nodes (3 for fault tests)")
    ] = 1,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="where the nodes keep their data (default: a new temporary directory)"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the cluster to be ready")] = 120.0,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="SASL_SSL only (SCRAM-SHA-512, a local CA), ACLs, one principal per service "
            "(docs/security.md); `broker status` lists them",
        ),
    ] = False,
) -> None:
    """Start a local Kafka cluster in the background and print its bootstrap address."""
    running = running_broker()
    if running is not None:
        if running.node_count != nodes or (running.secure is not None) != secure:
            kind = "secured " if running.secure is not None else ""
            raise BrokerError(
                f"a {running.node_count}-node {kind}broker is already running at "
                f"{running.bootstrap_servers}; stop it first with `ridestream broker down`"
            )
        _note(f"already running: {_describe(running)}")
        print(running.bootstrap_servers)
        return
    stale = load_state()
    if stale is not None:  # its JVMs died (reboot, kill): forget it, and its data unless we are reusing it
        reusing = data_dir is not None and data_dir.resolve() == stale.data_dir
        stale.stop(keep_data=stale.keep_data or reusing)
        clear_state()
    find_java()  # the usual problems first, before announcing a start
    ensure_kafka_jars(progress=_note)
    kind = "secured " if secure else ""
    _note(f"starting a {nodes}-node {kind}Apache Kafka {KAFKA_VERSION} cluster (KRaft)...")
    started = time.monotonic()
    kafka = LocalKafka.start(
        nodes=nodes, data_dir=data_dir, detach=True, timeout_s=timeout, progress=_note, secure=secure
    )
    try:
        write_state(kafka)
    except OSError as exc:
        kafka.stop()
        raise BrokerError(f"cannot record the broker in {state_path()}: {exc}") from None
    _note(
        f"ready in {time.monotonic() - started:.1f}s: {_describe(kafka)}; "
        "stop it with `ridestream broker down`"
    )
    if kafka.secure is not None:
        _note(_describe_security(kafka))
    print(kafka.bootstrap_servers)


@broker_app.command()
def status() -> None:
    """Say whether the broker started by `broker up` is running (exit 0) or not (exit 1)."""
    kafka = running_broker()
    if kafka is None:
        print("not running")
        raise typer.Exit(1)
    print(f"running: {_describe(kafka)}")
    if kafka.secure is not None:
        print(_describe_security(kafka))


@broker_app.command()
def down(
    keep_data: Annotated[
        bool, typer.Option("--keep-data", help="keep the data directory for a later `up --data-dir`")
    ] = False,
) -> None:
    """Stop the broker started by `broker up` and remove its data (unless --keep-data)."""
    kafka = load_state()
    if kafka is None:
        print("no local broker is running")
        return
    kafka.stop(keep_data=keep_data)
    clear_state()
    print(f"stopped; data kept in {kafka.data_dir}" if keep_data else "stopped")


@broker_app.command()
def fetch() -> None:
    """Download the Kafka broker jars from Maven Central into the cache (once; later runs reuse them)."""
    find_java()  # also when cached: `make broker-jars` is where a missing or old JDK should surface
    libs = ensure_kafka_jars(progress=_note)
    _note(f"Apache Kafka {KAFKA_VERSION} jars: {libs}")
