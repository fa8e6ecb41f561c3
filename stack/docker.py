"""A Docker engine and the images ridestream needs, made on this machine: no image registry is reachable.

    engine   `dockerd` with its own data root and socket under the cache, `--bridge=none --iptables=false`:
             every container runs on host networking, so all traffic stays on loopback. Started only when
             no engine answers on DOCKER_HOST; stopped with its owner (PR_SET_PDEATHSIG via setpriv, and
             atexit), like the local broker.
    base     a Debian root file system made by `debootstrap` and `docker import`ed: what `python:3.11-slim`
             and `apache/kafka` are to a user with a registry.
    images   ridestream/python (the base plus Python 3.11 and venv), ridestream:latest (the project's
             Dockerfile on that base), ridestream/kafka:<version> (Debian's JDK 17 plus the Kafka jars the
             project already fetches, configured by KAFKA_* variables like apache/kafka), ridestream/mlflow
             (the MLflow server docker-compose runs: deploy/mlflow.Dockerfile).

Builds use host networking to reach the package registries. Every image is built once and reused: a rerun
only checks that the images exist (`ensure_images`); `--rebuild` makes them again.

    python -m stack.docker up        start (or find) the engine, make the images; prints DOCKER_HOST
    python -m stack.docker engine    start (or find) the engine only
    python -m stack.docker status    {"host": ...} of the engine that answers, or null
    python -m stack.docker down      stop the engine this project started
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import RidestreamError
from stack.broker import KAFKA_VERSION, cache_root, ensure_kafka_jars

DEBIAN_SUITE = "bookworm"  # Python 3.11 and OpenJDK 17, as the machines here and the official images
BASE_IMAGE = f"ridestream/debian:{DEBIAN_SUITE}"
PYTHON_IMAGE = f"ridestream/python:3.11-{DEBIAN_SUITE}"
KAFKA_IMAGE = f"ridestream/kafka:{KAFKA_VERSION}"
APP_IMAGE = "ridestream:latest"
MLFLOW_IMAGE = "ridestream/mlflow:3"
START_TIMEOUT_S = 60.0
POLL_S = 0.2
REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = Path(__file__).with_name("docker_resources")
Progress = Callable[[str], None]
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


class DockerError(RidestreamError):
    """The Docker engine could not be started, or an image could not be made."""


def engine_dir() -> Path:
    return cache_root() / "docker"


def own_socket() -> str:
    return f"unix://{engine_dir() / 'docker.sock'}"


def docker_cli() -> str:
    found = shutil.which("docker")
    if found is None:
        raise DockerError("no docker client on PATH (apt-get install docker.io)")
    return found


def docker(host: str, *args: str, capture: bool = True, timeout_s: float = 600.0) -> str:
    """Run the docker CLI against `host`; a failure is one DockerError with the tail of its output."""
    done = subprocess.run(
        [docker_cli(), "-H", host, *args], capture_output=capture, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(((done.stderr or "") + (done.stdout or "")).strip().splitlines()[-15:])
        raise DockerError(f"docker {' '.join(args[:3])} failed ({done.returncode}):\n{tail}")
    return done.stdout or ""


def answers(host: str, timeout_s: float = 5.0) -> bool:
    """True when an engine answers `docker version` on `host`."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            [docker_cli(), "-H", host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def answering_host() -> str | None:
    """The engine to use: DOCKER_HOST when it answers, else this project's own when it runs."""
    return next((h for h in (os.environ.get("DOCKER_HOST"), own_socket()) if h and answers(h)), None)


@dataclass
class Engine:
    host: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def owned(self) -> bool:
        return self.process is not None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_engine(detach: bool = False) -> Engine:
    """The engine on DOCKER_HOST or this project's own socket when one answers; else a new dockerd."""
    host = answering_host()
    if host is not None:
        return Engine(host)
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise DockerError("no dockerd on this machine (apt-get install docker.io)")
    root = engine_dir()
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "exec").mkdir(parents=True, exist_ok=True)
    command = [
        dockerd,
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--host",
        own_socket(),
        "--pidfile",
        str(root / "dockerd.pid"),
        # No bridge and no iptables rules: containers use host networking only, traffic stays on loopback.
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
    ]
    setpriv = shutil.which("setpriv")
    if setpriv and not detach:
        command = [setpriv, "--pdeathsig", "TERM", "--", *command]
    with (root / "dockerd.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    engine = Engine(own_socket(), process)
    if not detach:
        atexit.register(engine.stop)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(engine.host, timeout_s=2.0):
        if process.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            log_tail = "\n".join((root / "dockerd.log").read_text(errors="replace").splitlines()[-10:])
            raise DockerError(f"dockerd did not start within {START_TIMEOUT_S:.0f}s:\n{log_tail}")
        time.sleep(POLL_S)  # poll interval of a real answer
    return engine


def stop_own_engine() -> bool:
    """Stop the dockerd this project started (found by its pid file). True when one was running."""
    pidfile = engine_dir() / "dockerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(POLL_S)
        os.kill(pid, signal.SIGKILL)
    return True


def image_exists(host: str, image: str) -> bool:
    done = subprocess.run(
        [docker_cli(), "-H", host, "image", "inspect", image], capture_output=True, check=False, timeout=60
    )
    return done.returncode == 0


def make_base_image(host: str, progress: Progress) -> None:
    """debootstrap a minimal Debian and import it: the base every other image builds on."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise DockerError("no debootstrap on this machine (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="ridestream-rootfs-", dir=engine_dir()) as work:
        rootfs = Path(work) / "rootfs"
        progress(f"debootstrap {DEBIAN_SUITE} (minbase) into {rootfs}: a few minutes, once")
        done = subprocess.run(
            [debootstrap, "--variant=minbase", DEBIAN_SUITE, str(rootfs)],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise DockerError("debootstrap failed:\n" + "\n".join(done.stdout.splitlines()[-10:]))
        archive = Path(work) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        docker(host, "import", "--change", 'CMD ["/bin/bash"]', str(archive), BASE_IMAGE)


def build(host: str, tag: str, dockerfile: Path, context: Path, args: Sequence[str] = ()) -> None:
    build_args = [part for arg in args for part in ("--build-arg", arg)]
    docker(
        host,
        "build",
        "--force-rm",
        "--network",
        "host",
        "-t",
        tag,
        "-f",
        str(dockerfile),
        *build_args,
        str(context),
        capture=True,
        timeout_s=1800,
    )


@contextlib.contextmanager
def python_context() -> Iterator[Path]:
    """The Python image's build context: its Dockerfile and this machine's extra certificate authorities."""
    with tempfile.TemporaryDirectory(prefix="ridestream-python-image-", dir=engine_dir()) as work:
        context = Path(work)
        shutil.copy2(DOCKERFILES / "python.Dockerfile", context / "python.Dockerfile")
        (context / "ca-certificates").mkdir()
        for cert in sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []:
            shutil.copy2(cert, context / "ca-certificates" / cert.name)
        yield context


@contextlib.contextmanager
def kafka_context() -> Iterator[Path]:
    """A build context with the Kafka jars (hard links into the cache where possible) and the entrypoint."""
    libs = ensure_kafka_jars()
    with tempfile.TemporaryDirectory(prefix="ridestream-kafka-image-", dir=engine_dir()) as work:
        context = Path(work)
        (context / "libs").mkdir()
        for jar in libs.iterdir():
            try:
                os.link(jar, context / "libs" / jar.name)
            except OSError:
                shutil.copy2(jar, context / "libs" / jar.name)
        for script in ("kafka-entrypoint.sh", "kafka-broker-api-versions.sh"):
            shutil.copy2(DOCKERFILES / script, context / script)
        shutil.copy2(REPO / "stack" / "broker_resources" / "log4j2.properties", context / "log4j2.properties")
        yield context


def ensure_images(host: str, rebuild: bool = False, progress: Progress = print) -> list[str]:
    """Make whichever of the images is missing (all of them with `rebuild`); returns what was built."""
    built: list[str] = []
    if rebuild or not image_exists(host, BASE_IMAGE):
        make_base_image(host, progress)
        built.append(BASE_IMAGE)
    if rebuild or built or not image_exists(host, PYTHON_IMAGE):
        progress(f"building {PYTHON_IMAGE}")
        with python_context() as context:
            build(host, PYTHON_IMAGE, context / "python.Dockerfile", context, [f"BASE_IMAGE={BASE_IMAGE}"])
        built.append(PYTHON_IMAGE)
    if rebuild or BASE_IMAGE in built or not image_exists(host, KAFKA_IMAGE):
        progress(f"building {KAFKA_IMAGE}")
        with kafka_context() as context:
            build(host, KAFKA_IMAGE, DOCKERFILES / "kafka.Dockerfile", context, [f"BASE_IMAGE={BASE_IMAGE}"])
        built.append(KAFKA_IMAGE)
    if rebuild or PYTHON_IMAGE in built or not image_exists(host, MLFLOW_IMAGE):
        progress(f"building {MLFLOW_IMAGE}")
        dockerfile = REPO / "deploy" / "mlflow.Dockerfile"
        build(host, MLFLOW_IMAGE, dockerfile, dockerfile.parent, [f"BASE_IMAGE={PYTHON_IMAGE}"])
        built.append(MLFLOW_IMAGE)
    # The application image is rebuilt on every call: the source changes; Docker's layer cache keeps it quick.
    progress(f"building {APP_IMAGE}")
    build(host, APP_IMAGE, REPO / "Dockerfile", REPO, [f"BASE_IMAGE={PYTHON_IMAGE}"])
    built.append(APP_IMAGE)
    return built


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stack.docker", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("command", choices=["up", "engine", "down", "status"])
    parser.add_argument("--rebuild", action="store_true", help="make every image again")
    args = parser.parse_args(argv)

    def note(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.command == "down":
            note("stopped" if stop_own_engine() else "no engine of ours was running")
            return
        if args.command == "status":
            host = answering_host()
            print(json.dumps({"host": host}))
            return
        engine = start_engine(detach=True)
        note(f"engine: {engine.host} ({'started' if engine.owned else 'already running'})")
        if args.command == "up":
            ensure_images(engine.host, rebuild=args.rebuild, progress=note)
        print(engine.host)
    except RidestreamError as error:
        print(f"ridestream: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
