"""The transactional calls' watchdog (shared.guarantees.Watchdog): it fires on an overrun, never on a call
that returned in time, and one thread serves every call."""

from __future__ import annotations

import threading

from shared.guarantees import Watchdog


class Overruns:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []
        self.fired = threading.Event()

    def __call__(self, what: str, seconds: float) -> None:
        self.seen.append((what, seconds))
        self.fired.set()


def watchdog_threads() -> int:
    return sum(thread.name == "ridestream-watchdog" for thread in threading.enumerate())


def test_a_call_that_overruns_its_deadline_is_reported_once() -> None:
    overruns = Overruns()
    watchdog = Watchdog(overruns)
    with watchdog.guard("commit_transaction", 0.05):
        assert overruns.fired.wait(10), "the overrun was never reported"
    assert overruns.seen == [("commit_transaction", 0.05)]


def test_a_call_that_returned_in_time_is_not_reported_and_one_thread_serves_every_call() -> None:
    overruns = Overruns()
    watchdog = Watchdog(overruns)
    before = watchdog_threads()
    for _ in range(50):
        with watchdog.guard("send_offsets_to_transaction", 0.05):
            pass  # returned at once: its deadline passes unarmed while the next call waits below
    assert watchdog_threads() == before + 1
    with watchdog.guard("commit_transaction", 0.3):
        assert overruns.fired.wait(10)
    assert overruns.seen == [("commit_transaction", 0.3)]
