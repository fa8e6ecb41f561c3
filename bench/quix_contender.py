"""The Quix Streams contender: the duration service written the way a Quix Streams user would write it.

    <.venv-quix>/bin/python -m bench.quix_contender --bootstrap-servers B --input T --output O --group G
                                                   --models DIR [--dlq T] [--idle-timeout S]

    Application(broker_address, consumer_group, auto_offset_reset="earliest", at-least-once)
    sdf = app.dataframe(app.topic(input, bytes))
        .apply(score one record, metadata=True)   → a prediction, a dead letter, or None (not scored here)
        .filter(outcome is not None)               ride_completed: the duration service ignores it
        .set_timestamp(now) .set_headers(outcome's)
        .to_topic(predictions | dlq, key=outcome's)

Same work as ridestream's duration service (bench/peers.py `score_record`): the same contract and decoding
(`shared.serde.decode_event` via `shared.runner.score_batch`), the same scorer
(`consumers.duration.scorer.load_scorer`), the same prediction JSON (`shared.serde.encode`) keyed by ride_id,
the same dead letters (original bytes plus `ridestream.*` reason headers) on the DLQ topic. What differs is
the point of the comparison: a StreamingDataFrame processes records one at a time, so the scorer is called,
and scikit-learn's `predict` runs, once per event, where ridestream calls it once per micro-batch.

Choices that keep the comparison fair, and why:
  - producer settings are ridestream's (`shared.kafka.make_producer`: idempotence, acks=all, linger.ms=5,
    lz4), so the difference measured is the processing model, not the wire settings;
  - commits follow Quix's defaults (a checkpoint every 5 s: flush, verify delivery, commit), as its users run;
  - outputs carry the wall-clock time they were produced (`set_timestamp`): Quix otherwise copies the input
    record's timestamp onto its outputs, which would make the harness's broker-CreateTime throughput and
    latency figures measure the producer of the input instead of this process;
  - one linear pipeline routed by `to_topic(callable)` instead of two filtered branches: Quix copies
    (pickles) the value at every branch point, a cost of the author's layout, not of the framework.

This module also builds the venv it runs in (`ensure_quix_venv`): quixstreams pins confluent-kafka, pydantic
and pydantic-settings below ridestream's versions, so it gets its own `.venv-quix`. The harness side
(`quix_command`, `quix_available`) imports nothing from Quix and runs in the main venv.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUIX_VENV = REPO / ".venv-quix"
REQUIREMENTS = Path(__file__).with_name("quix-requirements.txt")
STAMP_NAME = "ridestream-quix.stamp"
# Pinned to the main venv's exact versions: the model artifacts are pickles of these libraries' objects, and
# shared/models.py refuses an artifact fit by another scikit-learn major.minor.
MATCH_MAIN_VENV = (
    "scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl", "pandas", "pyarrow",
    # the model registry (shared/registry.py) the scorer loads its versions from
    "mlflow-skinny", "sqlalchemy", "alembic",
)  # fmt: skip
SERVICE = "duration"
# shared.runner.RunnerConfig's default: what ridestream's duration service accepts.
MAX_PAYLOAD_BYTES = 64 * 1024

log = logging.getLogger(__name__)


# ---- the venv (runs in the main venv) ----------------------------------------------------------------------


def venv_python(venv: Path = QUIX_VENV) -> Path:
    return venv / "bin" / "python"


def main_venv_pins() -> list[str]:
    """`name==version` of the scorer's numeric stack as installed in *this* interpreter (the main venv)."""
    if Path(sys.prefix).resolve() == QUIX_VENV.resolve():
        raise RuntimeError("ensure_quix_venv must run in ridestream's main venv: it copies that venv's pins")
    return [f"{name}=={importlib.metadata.version(name)}" for name in MATCH_MAIN_VENV]


def _stamp(pins: list[str]) -> str:
    requirements = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return json.dumps(
        {"python": sys.version.split()[0], "pins": pins, "requirements": requirements}, sort_keys=True
    )


def build_lock_path(venv: Path) -> Path:
    # Two harness runs starting at once must not pip-install into the same venv concurrently. Outside the
    # repo, so the lock never shows up as an untracked file.
    return (
        Path(tempfile.gettempdir())
        / f"ridestream-quix-venv-{hashlib.sha256(str(venv).encode()).hexdigest()[:12]}.lock"
    )


def ensure_quix_venv(venv: Path = QUIX_VENV) -> Path:
    """Build (or reuse) the Quix Streams venv; return its python. Idempotent: a stamp records what was built.

    Installed: bench/quix-requirements.txt (quixstreams and the scorer's other deps, in ranges both projects
    accept), the main venv's exact versions of MATCH_MAIN_VENV (scikit-learn ... the registry's),
    then this project in editable mode without its dependencies (whose confluent-kafka and pydantic pins
    quixstreams' own would contradict). The stamp holds the python version, those pins and the requirements
    file's hash; any change rebuilds.
    """
    pins = main_venv_pins()
    wanted = _stamp(pins)
    stamp = venv / STAMP_NAME
    # Imported here: this runs on the harness side; the contender side (the Quix venv) has no psutil.
    from stack.broker import exclusive_lock

    with exclusive_lock(build_lock_path(venv)):
        if stamp.is_file() and stamp.read_text() == wanted and venv_python(venv).exists():
            return venv_python(venv)
        if not venv_python(venv).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv_python(venv)), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS), *pins], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True)
        stamp.write_text(wanted)
    return venv_python(venv)


def quix_available() -> bool:
    """True when the venv is built, or can be: the requirements file is here and this python can make venvs.

    Cheap on purpose (the harness asks at start-up); the build itself, which needs a package index, happens
    on the first `quix_command` call and raises there if it fails.
    """
    if (QUIX_VENV / STAMP_NAME).is_file() and venv_python().exists():
        return True
    import importlib.util

    return REQUIREMENTS.is_file() and all(
        importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip")
    )


def quix_command(
    bootstrap: str, source: str, target: str, group: str, models: Path
) -> tuple[list[str], dict[str, str]]:
    """The harness's contender command: this module under the Quix venv's python (built on first use)."""
    python = ensure_quix_venv()
    return [
        str(python),
        "-m",
        "bench.quix_contender",
        "--bootstrap-servers",
        bootstrap,
        "--input",
        source,
        "--output",
        target,
        "--dlq",
        target + ".dlq",
        "--group",
        group,
        "--models",
        str(models),
    ], {}


# ---- the contender (runs in the Quix venv) ----------------------------------------------------------------


def build_app(
    bootstrap: str, source: str, target: str, dlq: str, group: str, models: Path, state_dir: Path
) -> Any:
    """The Quix Application with its StreamingDataFrame: consume → score one event → produce."""
    from quixstreams import Application, message_context
    from quixstreams.models import SerializationContext, Serializer

    from bench.peers import PeerOutput, PeerRecord, score_record
    from consumers.duration.scorer import load_scorer

    class OutcomeValue(Serializer):  # type: ignore[misc]  # quixstreams lives in .venv-quix: Any here
        """The bytes a PeerOutput carries (already encoded by shared.serde.encode, or the dead letter's
        input)."""

        def __call__(self, value: PeerOutput, ctx: SerializationContext) -> bytes | None:
            return value.value

    scorer = load_scorer(models)
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",  # like ridestream: a new group starts at the beginning
        processing_guarantee="at-least-once",
        # ridestream's producer settings (shared.kafka.make_producer), so only the processing model differs.
        producer_extra_config={
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        },
        state_dir=state_dir,  # stateless pipeline; keeps Quix's default ./state out of the repo
        loglevel="WARNING",
    )
    rides = app.topic(source, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        "prediction": app.topic(target, key_serializer="bytes", value_serializer=OutcomeValue()),
        "dead_letter": app.topic(dlq, key_serializer="bytes", value_serializer=OutcomeValue()),
    }

    def score(value: bytes | None, key: bytes | None, _timestamp: int, headers: Any) -> PeerOutput | None:
        context = message_context()
        record = PeerRecord(
            context.topic, context.partition, context.offset, key, value, list(headers) if headers else None
        )
        return score_record(record, scorer, SERVICE, MAX_PAYLOAD_BYTES)

    def produced_now(*_: Any) -> int:
        return time.time_ns() // 1_000_000

    def route(outcome: PeerOutput, *_: Any) -> Any:
        return outputs[outcome.kind]

    sdf = app.dataframe(rides)
    sdf = sdf.apply(score, metadata=True)
    sdf = sdf.filter(lambda outcome: outcome is not None)
    sdf = sdf.set_timestamp(produced_now)
    sdf = sdf.set_headers(lambda outcome, *_: outcome.headers)
    sdf.to_topic(route, key=lambda outcome: outcome.key)
    log.info("quix contender: %s → %s (dlq %s), model %s", source, target, dlq, scorer.model_version)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--dlq", help="dead-letter topic (default: OUTPUT.dlq)")
    parser.add_argument("--group", required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="stop after this many seconds without a record (0: run until SIGTERM)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="ridestream-quix-") as state_dir:
        app = build_app(
            args.bootstrap_servers,
            args.input,
            args.output,
            args.dlq or args.output + ".dlq",
            args.group,
            args.models,
            Path(state_dir),
        )
        # Quix stops gracefully on SIGTERM / Ctrl+C: it checkpoints (flush, verify, commit) before leaving.
        app.run(timeout=args.idle_timeout, collect=False)


if __name__ == "__main__":
    main()
