"""The benchmark's arithmetic: median ratios of interleaved rounds, the targets verdict, the "max" rate."""

from __future__ import annotations

from typing import Any

from bench.consumers import markdown, max_offered_rate, rotated, round_ratios, targets_table


def contender(events_per_s: int, p99_at_5k: float | None = None, rss: float = 250.0) -> dict[str, Any]:
    return {
        "events_per_s": events_per_s,
        "p99_ms": {"5000": p99_at_5k} if p99_at_5k is not None else {},
        "peak_rss_mb": rss,
        "cpu_s_per_1k_events": 0.02,
    }


def test_each_ratio_is_the_median_of_same_round_ratios_not_a_ratio_of_medians() -> None:
    rounds = [
        {"passthrough": 100.0, "ridestream-alo": 70.0},
        {"passthrough": 200.0, "ridestream-alo": 60.0},
        {"passthrough": 100.0, "ridestream-alo": 65.0},
    ]
    assert round_ratios(rounds) == {"ridestream-alo/passthrough": 0.65}
    assert round_ratios([{"ridestream-alo": 1.0}]) == {}  # no ceiling in the run: no ratio, no crash


def test_every_contender_leads_one_round_in_turn() -> None:
    names = ["passthrough", "ridestream-alo", "ridestream-eos"]
    assert [rotated(names, i)[0] for i in range(4)] == [
        "passthrough",
        "ridestream-alo",
        "ridestream-eos",
        "passthrough",
    ]


def test_the_targets_table_marks_a_missed_ratio_and_a_met_latency() -> None:
    result = {
        "ratios": {"ridestream-alo/passthrough": 0.25},
        "contenders": {"ridestream-alo": contender(50_000, 18.0)},
    }
    rows = "\n".join(targets_table(result))
    assert "| at-least-once events/s ÷ passthrough | 0.25 | ≥ 0.6 | ✗ |" in rows
    assert "| at-least-once p99 ms @ 5,000/s | 18 | ≤ 25 | ✓ |" in rows
    assert "Quix" not in rows  # a contender that did not run is not judged


def test_the_max_rate_is_below_the_contenders_own_rate_and_within_the_load_generators_reach() -> None:
    assert max_offered_rate(50_000) == 45_000
    assert max_offered_rate(400_000) == 100_000


def test_the_report_shows_the_latency_at_max_with_its_offered_rate() -> None:
    alo = {**contender(50_000, 38.0), "latency_at_max": {"offered_per_s": 45_000.0, "p99_ms": 107.0}}
    text = markdown({"rates": [5000.0], "contenders": {"ridestream-alo": alo}, "ratios": {}})
    assert "p99 ms @ max (offered/s)" in text and "| 38 | 107 (45,000) |" in text


def test_cpu_per_event_is_judged_against_the_passthroughs_own() -> None:
    result = {
        "ratios": {},
        "contenders": {
            "passthrough": {**contender(200_000), "cpu_s_per_1k_events": 0.004},
            "ridestream-alo": {**contender(50_000), "cpu_s_per_1k_events": 0.02},
        },
    }
    assert "| CPU per event, at-least-once ÷ passthrough | 5 | ≤ 2 | ✗ |" in "\n".join(targets_table(result))
