"""A real Apache Kafka broker (KRaft) for tests, the demo and `ridestream broker`, without Docker.

The machines ridestream runs on often have a JDK but no Docker engine, so the broker is started from the
release's own jars, fetched once from Maven Central with Maven and cached:

    ${RIDESTREAM_CACHE:-~/.cache/ridestream}/kafka-<version>/libs/*.jar    (+ COMPLETE marker)

Each node is one combined broker+controller JVM (`java -cp libs/* kafka.Kafka server.properties`) listening
on free loopback ports, with its storage formatted by `kafka.tools.StorageTool` and its log in its own
directory. Readiness is an answered admin request that sees every node, never a sleep.

    with LocalKafka.start(nodes=3) as kafka:
        kafka.bootstrap_servers            # "127.0.0.1:41001,127.0.0.1:41003,127.0.0.1:41005"
        kafka.kill_node(1)                 # fault tests: SIGKILL one node...
        kafka.start_node(1)                # ...and bring it back on the same ports and data

`ridestream broker up` starts a detached broker that outlives the command and records it in
`.ridestream/broker.json` (see `running_broker`); `KafkaSettings` finds it there when no bootstrap servers
are configured.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Self

import psutil

from shared.errors import BrokerError, JavaNotFoundError, KafkaUnavailableError
from shared.kafka import KafkaException, topic_names, wait_for_cluster
from shared.local_cluster import state_path
from stack.security import SecureCluster, provision, service_grants

__all__ = [
    "KAFKA_VERSION",
    "LocalKafka",
    "clear_state",
    "ensure_kafka_jars",
    "find_java",
    "load_state",
    "running_bootstrap_servers",
    "running_broker",
    "state_path",
    "write_state",
]

KAFKA_VERSION = "4.1.1"
# Kafka 4 brokers are compiled for Java 17.
MIN_JAVA_MAJOR = 17
JDK_HINT = "install a JDK 17+, e.g. apt-get install openjdk-17-jre-headless"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120.0
# Under the data directory: a secured cluster's CA, broker keystore and password files.
SECURITY_DIR = "security"
STOP_TIMEOUT_S = 30.0
# How often loops re-check a real condition (a port, a pid); never a readiness guess on its own.
POLL_S = 0.1

# Sized for a 2-core laptop or CI runner that may run three nodes next to the services under test.
JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    # Kafka's own defaults from bin/kafka-run-class.sh: short pauses keep the broker's sessions alive.
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    # A node out of heap must die visibly (its log says why) rather than limp on and time clients out.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# StorageTool runs for a second: the C1 compiler alone starts it faster.
TOOL_JVM_OPTIONS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")

Progress = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- Java ----


def find_java() -> str:
    """The `java` that kafka-run-class.sh would use ($JAVA_HOME/bin/java, else PATH), checked to be 17+."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise JavaNotFoundError(
                f"JAVA_HOME={java_home} has no bin/java: point JAVA_HOME at a JDK 17+ or unset it "
                f"({JDK_HINT})"
            )
        path = str(java)
    else:
        found = shutil.which("java")
        if found is None:
            raise JavaNotFoundError(f"no `java` on PATH and JAVA_HOME is not set: {JDK_HINT}")
        path = found
    major = _java_major(path)
    if major < MIN_JAVA_MAJOR:
        raise JavaNotFoundError(
            f"{path} is Java {major} but the Kafka {KAFKA_VERSION} broker needs Java "
            f"{MIN_JAVA_MAJOR}+: {JDK_HINT}"
        )
    return path


@functools.lru_cache(maxsize=8)
def _java_major(java: str) -> int:
    """Major version from `java -version` ("1.8.0_402" → 8, "17.0.15" → 17)."""
    try:
        result = subprocess.run([java, "-version"], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFoundError(f"cannot run {java} -version ({exc}): {JDK_HINT}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if result.returncode != 0 or match is None:
        raise JavaNotFoundError(f"{java} -version did not report a version: {JDK_HINT}")
    first, second = match.group(1), match.group(2)
    return int(second) if first == "1" and second else int(first)


# --------------------------------------------------------------------------------------------- jars ----


def cache_root() -> Path:
    return Path(os.environ.get("RIDESTREAM_CACHE") or Path.home() / ".cache" / "ridestream")


def kafka_home() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}"


def _resource(name: str) -> str:
    return resources.files("stack").joinpath("broker_resources", name).read_text(encoding="utf-8")


def ensure_kafka_jars(progress: Progress = _to_stderr) -> Path:
    """The libs/ directory of the Kafka release, fetched from Maven Central on first use only.

    The COMPLETE marker is written last, after an atomic rename of the finished download, so an interrupted
    fetch is redone rather than trusted; a file lock lets parallel test runs share one download.
    """
    home = kafka_home()
    libs, marker = home / "libs", home / "COMPLETE"
    if marker.is_file() and libs.is_dir():
        return libs
    find_java()  # Maven needs a JDK too; say so in our words rather than Maven's
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (`mvn`) is needed once to fetch the Kafka broker jars from Maven Central: "
            "install it, e.g. apt-get install maven"
        )
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / ".lock"):
        if marker.is_file() and libs.is_dir():
            return libs  # another process fetched them while we waited for the lock
        progress(
            f"fetching Apache Kafka {KAFKA_VERSION} broker jars from Maven Central into {libs} "
            "(first use only)"
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=home) as staging:
            jars = _maven_copy_dependencies(mvn, Path(staging), progress)
            shutil.rmtree(libs, ignore_errors=True)
            jars.rename(libs)
        names = sorted(p.name for p in libs.glob("*.jar"))
        marker.write_text("\n".join(names) + "\n")
        size_mb = sum(p.stat().st_size for p in libs.glob("*.jar")) / 1e6
        progress(f"cached {len(names)} jars ({size_mb:.0f} MB) in {time.monotonic() - started:.0f}s")
    return libs


# Fully qualified so no plugin-prefix lookup is involved; Maven 3.8's default (2.8) predates Java 17.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def _maven_copy_dependencies(mvn: str, staging: Path, progress: Progress) -> Path:
    """Run Maven on the bundled pom, report progress every few jars; on failure show Maven's own errors."""
    pom = staging / "pom.xml"
    pom.write_text(_resource("pom.xml"))
    out = staging / "jars"
    command = [
        mvn,
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"-Dkafka.version={KAFKA_VERSION}",
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={out}",
    ]
    output: deque[str] = deque(maxlen=200)
    downloaded = re.compile(r"Downloaded from \S+: \S+\.jar \(([\d.]+) ([kM]?B)")
    count, megabytes = 0, 0.0
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=staging,
        )
    except OSError as exc:
        raise BrokerError(f"cannot run Maven ({mvn}): {exc}") from None
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            output.append(re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip())
            if match := downloaded.search(line):
                count += 1
                megabytes += float(match.group(1)) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0}[match.group(2)]
                if count % 10 == 0:
                    progress(f"  {count} jars downloaded, {megabytes:.0f} MB so far")
    if process.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"fetching the Kafka {KAFKA_VERSION} jars with Maven failed (exit {process.returncode}):\n"
            + _maven_errors(list(output))
        )
    return out


def _maven_errors(lines: list[str]) -> str:
    """Maven's [ERROR] lines without its generic advice; the plain tail when there are none."""
    advice = re.compile(r"\[ERROR\]\s*($|To see the full|Re-run Maven|For more information|\[Help \d+\])")
    errors = [line for line in lines if line.startswith("[ERROR]") and not advice.match(line)]
    return "\n".join(errors[-15:] or [line for line in lines if line.strip()][-15:])


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing): one process at a time past this point."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- config ----


def cluster_config(nodes: int) -> dict[str, str]:
    """Settings every node of an n-node test cluster shares (also used for the Docker broker)."""
    replicas = min(nodes, 3)
    min_isr = 2 if replicas >= 3 else 1
    failover = (
        {}
        if nodes == 1
        else {
            # Fault tests: a killed node is fenced, and its partitions fail over, after 5 s instead of 9 s.
            # Five missed 1 s heartbeats still tolerate GC pauses and a busy 2-core machine.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "5000",
        }
    )
    return {
        **failover,
        # Topics created without an explicit factor (replication_factor=-1) get a copy on up to 3 nodes...
        "default.replication.factor": str(replicas),
        # ...and acks=all needs 2 of 3 copies, so a 3-node cluster keeps accepting writes with one node down.
        "min.insync.replicas": str(min_isr),
        # The internal topics must fit the cluster (their defaults of 3 cannot be met by a single node).
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # A test or demo consumer group starts at once instead of waiting 3 s for more members to join.
        "group.initial.rebalance.delay.ms": "0",
    }


def node_config(
    index: int,
    ports: list[tuple[int, int]],
    log_dir: str,
    bind_host: str = LOOPBACK,
    advertised_host: str = LOOPBACK,
    secure: SecureCluster | None = None,
) -> dict[str, str]:
    """server.properties of node `index` in a cluster whose (broker, controller) ports are `ports`; with
    `secure`, its one client listener is SASL_SSL and the controllers talk mutual TLS (stack/security.py)."""
    broker_port, controller_port = ports[index]
    listeners = (
        {} if secure is None else secure.node_config(broker_port, controller_port, bind_host, advertised_host)
    )
    return {
        # Combined mode: one JVM per node is both broker and KRaft controller, the cheapest real cluster.
        "process.roles": "broker,controller",
        "node.id": str(index),
        # A static quorum: every node knows all voters from its config, no dynamic-quorum bootstrap step.
        "controller.quorum.voters": ",".join(f"{i}@{LOOPBACK}:{c}" for i, (_, c) in enumerate(ports)),
        "controller.listener.names": "CONTROLLER",
        "listeners": f"PLAINTEXT://{bind_host}:{broker_port},CONTROLLER://{bind_host}:{controller_port}",
        # Clients and the other nodes reach this node on loopback only: nothing is exposed to the network.
        "advertised.listeners": f"PLAINTEXT://{advertised_host}:{broker_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": log_dir,
        **cluster_config(len(ports)),
        **listeners,
    }


def _properties(config: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in config.items())


def new_cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints (url-safe base64 of 16 random bytes), without a JVM."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka rejects ids that would read as a command-line flag
            return text


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all sockets stay open until every port is picked."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


# ------------------------------------------------------------------------------------------ process ----


@dataclass
class _Jvm:
    """A node's JVM: a child (Popen) of this process, or adopted by pid from a `broker up` state file."""

    pid: int
    # Process start time (psutil): guards against acting on an unrelated process that reused the pid.
    started_at: float
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            process = psutil.Process(self.pid)
            same = math.isclose(process.create_time(), self.started_at, abs_tol=0.05)
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout_s: float) -> bool:
        """True once the JVM has exited (and, for a child, been reaped)."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while self.alive():  # not psutil.wait: an unreaped zombie of a dead parent counts as gone
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True


@dataclass
class _Node:
    index: int
    broker_port: int
    controller_port: int
    directory: Path
    jvm: _Jvm | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.broker_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def jvm_out_path(self) -> Path:
        return self.directory / "jvm.out"

    def alive(self) -> bool:
        return self.jvm is not None and self.jvm.alive()


def _tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a file that may be large (reads only its end)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            return handle.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _excerpt(lines: list[str], limit: int = 12) -> list[str]:
    """What a person needs from a failed JVM's output: from its first ERROR on, messages but no stack frames.

    Without an ERROR line, simply the last lines.
    """
    readable = [line for line in lines if line.strip() and not re.match(r"\s+(at |\.\.\. \d+ more)", line)]
    first_error = next(
        (i for i, line in enumerate(readable) if re.match(r"\[[^]]+\] (ERROR|FATAL) ", line)), None
    )
    if first_error is None:
        return readable[-limit:]
    # the ERROR and WARN lines and the exception messages (lines without a log prefix) that follow it
    relevant = [
        line for line in readable[first_error:] if not re.match(r"\[[^]]+\] (INFO|DEBUG|TRACE) ", line)
    ]
    return relevant[:limit]


def _failure_excerpt(node: _Node) -> str:
    parts = []
    for name, path in (("log", node.log_path), ("JVM output", node.jvm_out_path)):
        excerpt = _excerpt(_tail(path, 400))
        if excerpt:
            parts.append(f"node {node.index} {name}:\n" + "\n".join(excerpt))
    return "\n".join(parts) or f"(node {node.index} wrote no log)"


_OWNED: set[LocalKafka] = set()


def _die_with_parent(command: list[str]) -> list[str]:
    """Have the JVM receive SIGTERM when the thread that started it dies (Linux PR_SET_PDEATHSIG, set by
    util-linux's setpriv before it execs java), so an owner killed by a signal, which skips atexit, leaves
    no orphan broker. setpriv rather than a preexec_fn: forking a threaded process into Python code can
    deadlock. Without setpriv the JVM is still stopped by `stop()` and atexit."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


@atexit.register
def _stop_owned() -> None:
    """JVMs run in their own session (a Ctrl+C reaches Python, not them): stop them when Python exits."""
    for kafka in list(_OWNED):
        if kafka.owner_pid == os.getpid():  # a forked child exiting must not stop its parent's cluster
            kafka.stop()


class LocalKafka:
    """A KRaft cluster of `nodes` combined broker+controller JVMs on loopback. Use it as a context manager.

    Owned clusters are stopped when the `with` block or the Python process ends; a detached one (`broker
    up`) outlives its process and is stopped later through its state file.
    """

    def __init__(self, nodes: list[_Node], data_dir: Path, keep_data: bool, remove_data_dir: bool) -> None:
        self._nodes = nodes
        self.data_dir = data_dir
        self.keep_data = keep_data
        # True when this object created data_dir (then it removes it whole, otherwise only its node dirs).
        self._remove_data_dir = remove_data_dir
        self._libs: Path | None = None
        self._java: str | None = None
        # False only for a cluster `start`ed without `detach` (its JVMs die with this process); one adopted
        # from its state file counts as detached.
        self._detached = True
        self.owner_pid = os.getpid()
        self.bootstrap_servers: str = ",".join(node.address for node in nodes)
        # A `--secure` cluster's certificates and credentials; None for a plaintext one.
        self.secure: SecureCluster | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        nodes: int = 1,
        data_dir: Path | None = None,
        keep_data: bool = False,
        *,
        detach: bool = False,
        timeout_s: float = START_TIMEOUT_S,
        config_overrides: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        secure: bool = False,
    ) -> LocalKafka:
        """Fetch the jars if needed, format storage, start every node and wait until all serve metadata.

        `data_dir` that already holds formatted nodes of a same-sized cluster is reused (its topics survive);
        otherwise a fresh cluster is formatted. Any failure stops what was started and raises BrokerError.

        `secure`: SASL_SSL only, with ACLs; once up, the fleet's principals and topics are provisioned
        (stack/security.py) and `kafka.secure` holds their credentials.
        """
        if nodes < 1:
            raise BrokerError(f"a cluster needs at least one node, not {nodes}")
        java = find_java()
        libs = ensure_kafka_jars(progress or _to_stderr)
        directory, remove_dir, reused = _prepare_data_dir(data_dir, nodes)
        if secure and reused:
            # Its credentials live only in its metadata log and were never written down anywhere we read.
            raise BrokerError(f"{directory} holds a cluster already: a --secure cluster starts from new data")
        ports = free_ports(2 * nodes)
        pairs = [(ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]
        members = [_Node(i, b, c, directory / f"node-{i}") for i, (b, c) in enumerate(pairs)]
        kafka = cls(members, directory, keep_data, remove_dir)
        kafka._java, kafka._libs = java, libs
        kafka._detached = detach
        try:
            if secure:
                kafka.secure = SecureCluster.create(directory / SECURITY_DIR)
            kafka._write_configs(pairs, config_overrides or {})
            kafka._format_storage()
            if not detach:
                _OWNED.add(kafka)
            for node in members:
                kafka._launch(node)
            kafka._await_ready(members, time.monotonic() + timeout_s)
            if kafka.secure is not None:
                kafka._provision(time.monotonic() + timeout_s)
        except BaseException:
            kafka.stop(keep_data=keep_data or reused, timeout_s=5.0)  # never delete data we were given
            raise
        return kafka

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self, keep_data: bool | None = None, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every node (SIGTERM together, SIGKILL after `timeout_s`), then remove the data unless kept."""
        _OWNED.discard(self)
        running = [node.jvm for node in self._nodes if node.jvm is not None and node.alive()]
        for jvm in running:
            jvm.signal(signal.SIGTERM)
            jvm.signal(signal.SIGCONT)  # a node frozen by a fault test (SIGSTOP) must run to handle SIGTERM
        deadline = time.monotonic() + timeout_s
        for jvm in running:
            if not jvm.wait(max(0.0, deadline - time.monotonic())):
                jvm.signal(signal.SIGKILL)
                jvm.wait(10.0)
        if not (self.keep_data if keep_data is None else keep_data):
            self._remove_data()

    # -- fault-test controls ----------------------------------------------------------------------------

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node `index`; for SIGKILL/SIGTERM/SIGINT, return once the JVM is gone.

        Other signals (SIGSTOP/SIGCONT to freeze a node) return at once.
        """
        node = self._node(index)
        if node.jvm is None or not node.alive():
            raise BrokerError(f"node {index} is not running")
        node.jvm.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) and not node.jvm.wait(STOP_TIMEOUT_S):
            raise BrokerError(f"node {index} did not exit within {STOP_TIMEOUT_S:.0f}s of signal {sig}")

    def start_node(self, index: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Restart a stopped node on its ports and data; return once it serves metadata again."""
        node = self._node(index)
        if node.alive():
            raise BrokerError(f"node {index} is already running")
        self._launch(node)
        self._await_ready([node], time.monotonic() + timeout_s)

    def node_log_tail(self, index: int, lines: int = 50) -> str:
        return "\n".join(_tail(self._node(index).log_path, lines))

    def node_alive(self, index: int) -> bool:
        return self._node(index).alive()

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    def node_address(self, index: int) -> str:
        return self._node(index).address

    def pids(self) -> list[int]:
        return [node.jvm.pid for node in self._nodes if node.jvm is not None and node.alive()]

    # -- internals --------------------------------------------------------------------------------------

    def _node(self, index: int) -> _Node:
        if not 0 <= index < len(self._nodes):
            raise BrokerError(f"no node {index} in a {len(self._nodes)}-node cluster")
        return self._nodes[index]

    def _write_configs(self, ports: list[tuple[int, int]], overrides: Mapping[str, str]) -> None:
        log4j2 = _resource("log4j2.properties")
        for node in self._nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            config = {
                **node_config(node.index, ports, str(node.directory / "data"), secure=self.secure),
                **overrides,
            }
            (node.directory / "server.properties").write_text(_properties(config))
            (node.directory / "log4j2.properties").write_text(log4j2)

    def _java_command(self, node: _Node, jvm_options: tuple[str, ...], *args: str) -> list[str]:
        if self._java is None or self._libs is None:  # a cluster adopted from a state file
            self._java, self._libs = find_java(), ensure_kafka_jars()
        return [
            self._java,
            *jvm_options,
            f"-Dlog4j2.configurationFile={node.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.directory}",
            "-cp",
            str(self._libs / "*"),
            *args,
        ]

    def _format_storage(self) -> None:
        """`kafka-storage.sh format` for every node not formatted yet, in parallel (one cluster id)."""
        cluster_id = new_cluster_id()
        pending = [n for n in self._nodes if not (n.directory / "data" / "meta.properties").is_file()]
        tools = [
            (
                node,
                subprocess.Popen(
                    self._java_command(
                        node,
                        TOOL_JVM_OPTIONS,
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        cluster_id,
                        "-c",
                        str(node.directory / "server.properties"),
                        *(self.secure.format_arguments() if self.secure else ()),
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
            for node in pending
        ]
        failures = []
        for node, tool in tools:
            try:
                output, _ = tool.communicate(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                tool.kill()
                output, _ = tool.communicate()
            if tool.returncode != 0:
                failures.append(f"node {node.index}: " + "\n".join(_excerpt(output.splitlines(), 8)))
        if failures:
            raise BrokerError("formatting the Kafka storage failed:\n" + "\n".join(failures))

    def _launch(self, node: _Node) -> None:
        """Start the node's JVM in its own session, output to files (never to our pipes:
        it may outlive us)."""
        command = self._java_command(
            node, JVM_OPTIONS, "kafka.Kafka", str(node.directory / "server.properties")
        )
        if not self._detached:
            command = _die_with_parent(command)
        with node.jvm_out_path.open("ab") as out:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.directory,
                start_new_session=True,
            )
        try:
            started_at = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            started_at = 0.0  # already gone: _await_ready reports it with the log tail
        node.jvm = _Jvm(popen.pid, started_at, popen)

    def _await_ready(self, nodes: list[_Node], deadline: float) -> None:
        """Each node's port accepts, then a metadata request sent to that node sees every live node."""
        for node in nodes:
            _await_listening(node, deadline)
        expected = sum(1 for n in self._nodes if n.alive())
        for node in nodes:
            try:
                wait_for_cluster(
                    self.admin_config(node.address),
                    max(1.0, deadline - time.monotonic()),
                    expected_nodes=expected,
                )
            except KafkaUnavailableError as exc:
                state = "exited" if not node.alive() else "is running but not ready"
                raise BrokerError(
                    f"Kafka node {node.index} {state}: {exc}\n{_failure_excerpt(node)}"
                ) from None

    def _provision(self, deadline: float) -> None:
        """Create the principals, their ACLs and topics; return once every node lets the last one in.

        Credentials and ACLs reach each broker through the metadata log: until a node has them, the
        principal's first connection there would be refused.
        """
        assert self.secure is not None
        grants = service_grants()
        self.secure.passwords = provision(self.admin_config(), grants)
        self.secure.write_password_files()
        last = list(grants)[-1]
        visible = {grant.name for grant in grants[last] if grant.resource == "topic"}
        for node in self._nodes:
            config = self.secure.client_config(node.address, last)
            while not _sees(config, visible):
                if time.monotonic() > deadline:
                    raise BrokerError(f"node {node.index} did not apply the ACLs of {last!r} in time")
                time.sleep(POLL_S)

    def admin_config(self, bootstrap_servers: str | None = None) -> dict[str, str]:
        """Client settings of the cluster's super user (only an address for a plaintext cluster)."""
        servers = bootstrap_servers or self.bootstrap_servers
        if self.secure is None:
            return {"bootstrap.servers": servers}
        return self.secure.client_config(servers)

    def client_config(self, user: str) -> dict[str, str]:
        """Client settings of a principal of a secured cluster (`admin`, `producer`, `tip`, ...)."""
        if self.secure is None:
            raise BrokerError("this cluster is not secured: it has no principals")
        if user not in self.secure.principals:
            raise BrokerError(f"no principal {user!r} (known: {', '.join(self.secure.principals)})")
        return self.secure.client_config(self.bootstrap_servers, user)

    def _remove_data(self) -> None:
        if self._remove_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        for node in self._nodes:
            shutil.rmtree(node.directory, ignore_errors=True)
        shutil.rmtree(self.data_dir / SECURITY_DIR, ignore_errors=True)

    # -- detached state -----------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "kafka_version": KAFKA_VERSION,
            "bootstrap_servers": self.bootstrap_servers,
            "data_dir": str(self.data_dir),
            "keep_data": self.keep_data,
            "remove_data_dir": self._remove_data_dir,
            **({"security": self.secure.to_state()} if self.secure is not None else {}),
            "nodes": [
                {
                    "index": n.index,
                    "broker_port": n.broker_port,
                    "controller_port": n.controller_port,
                    "pid": n.jvm.pid if n.jvm else None,
                    "started_at": n.jvm.started_at if n.jvm else None,
                }
                for n in self._nodes
            ],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LocalKafka:
        """Adopt a detached cluster by its recorded pids (for `broker status` / `broker down`)."""
        data_dir = Path(state["data_dir"])
        nodes = [
            _Node(
                n["index"],
                n["broker_port"],
                n["controller_port"],
                data_dir / f"node-{n['index']}",
                _Jvm(n["pid"], n["started_at"]) if n.get("pid") else None,
            )
            for n in state["nodes"]
        ]
        kafka = cls(nodes, data_dir, bool(state.get("keep_data")), bool(state.get("remove_data_dir")))
        if state.get("security"):
            kafka.secure = SecureCluster.from_state(state["security"])
        return kafka


def _sees(client_config: Mapping[str, str], topics: set[str]) -> bool:
    """True when the client authenticates and its metadata lists every one of `topics`."""
    try:
        return topics <= set(topic_names(client_config, timeout_s=5.0))
    except KafkaException:
        return False  # refused or timed out: the node has not applied the credential yet


def _prepare_data_dir(data_dir: Path | None, nodes: int) -> tuple[Path, bool, bool]:
    """(directory, created by us, holds a formatted cluster to reuse).

    An existing directory must be empty or hold the nodes of a cluster of the same size (kept data).
    """
    if data_dir is None:
        return Path(tempfile.mkdtemp(prefix="ridestream-kafka-")), True, False
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"cannot create the broker data directory {data_dir}: {exc}") from None
    formatted = len(list(data_dir.glob("node-*/data/meta.properties")))
    if formatted and formatted != nodes:
        raise BrokerError(
            f"{data_dir} holds data of a {formatted}-node cluster; start it with "
            f"--nodes {formatted} or choose another data directory"
        )
    return data_dir.resolve(), created, formatted > 0


def _await_listening(node: _Node, deadline: float) -> None:
    """Poll the node's broker port; fail at once, with its log, if the JVM exits first."""
    while True:
        if not node.alive():
            code = node.jvm.popen.poll() if node.jvm and node.jvm.popen else None
            raise BrokerError(
                f"Kafka node {node.index} exited during start (exit code {code})\n{_failure_excerpt(node)}"
            )
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((LOOPBACK, node.broker_port)) == 0:
                return
        if time.monotonic() > deadline:
            raise BrokerError(
                f"Kafka node {node.index} did not open port {node.broker_port} in time\n"
                f"{_failure_excerpt(node)}"
            )
        time.sleep(POLL_S)


# ----------------------------------------------------------------------------------- detached state ----


def write_state(kafka: LocalKafka) -> Path:
    """Record the cluster for later commands; owner-only, since a secured one's passwords are in it."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(kafka.to_state(), indent=2) + "\n")
    staging.replace(path)  # readers never see half a file
    return path


def load_state() -> LocalKafka | None:
    """The cluster recorded by `broker up`, alive or not; None without a (readable) state file."""
    try:
        return LocalKafka.from_state(json.loads(state_path().read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_state() -> None:
    state_path().unlink(missing_ok=True)


def running_broker() -> LocalKafka | None:
    """The detached cluster of `broker up` when at least one of its JVMs is alive."""
    kafka = load_state()
    return kafka if kafka is not None and kafka.pids() else None


def running_bootstrap_servers() -> str | None:
    """Bootstrap servers of the broker that `ridestream broker up` started here, if it is still running."""
    kafka = running_broker()
    return kafka.bootstrap_servers if kafka is not None else None
