"""A process's life: SIGTERM/SIGINT → a stop event the run loop checks between batches, logging, and the
guard that turns a domain error into one plain line and a non-zero exit.

The first signal asks for a clean stop (finish the batch, flush, commit, leave the group); a second Ctrl+C
restores Python's default handler so an impatient person can still interrupt a stuck shutdown.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from pydantic import ValidationError

from shared.errors import RidestreamError

T = TypeVar("T")


def install_stop_handlers(stop: threading.Event) -> None:
    """Route SIGTERM and SIGINT to `stop`. Only valid in the main thread."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def stop_event(stop: threading.Event | None) -> threading.Event:
    """`stop` itself, or (for a process run from its entry point) a new event set by SIGTERM/SIGINT."""
    if stop is not None:
        return stop
    stop = threading.Event()
    install_stop_handlers(stop)
    return stop


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
    )


def run_guarded(command: Callable[[], T]) -> T:
    """Run `command`; a domain error or invalid setting becomes one plain line and a non-zero exit.

    The entry points of every process (the `ridestream` CLI, `python -m consumers.<service>`) go through
    here; it needs no CLI library, so a scoring process imports only what it runs."""
    configure_logging()
    try:
        return command()
    except RidestreamError as error:
        print(f"ridestream: error: {error}", file=sys.stderr)
        sys.exit(1)
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        print(f"ridestream: invalid settings: {details}", file=sys.stderr)
        sys.exit(2)
