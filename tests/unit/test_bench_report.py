"""The benchmark's arithmetic: median ratios of interleaved rounds, the targets verdict, the "max" rate."""

from __future__ import annotations

from typing import Any

import pytest

from bench.consumers import (
    markdown,
    max_offered_rate,
    rotated,
    round_ratios,
    soak_line,
    soak_window,
    targets_table,
)

MB = 2**20


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


def soak_samples() -> list[tuple[float, int]]:
    """A process sampled every 0.1 s: 8 s of start-up climbing 100 → 416 MB, then 10 s of scoring flat at
    450 MB, then idle after its last output."""
    start_up = [(i / 10, (100 + 4 * i) * MB) for i in range(80)]
    scoring = [(8.0 + i / 10, 450 * MB) for i in range(100)]
    idle = [(18.0 + i / 10, 900 * MB) for i in range(1, 20)]
    return start_up + scoring + idle


def test_the_soak_compares_rss_while_scoring_not_start_up_against_steady_state() -> None:
    window = soak_window(soak_samples(), first_output_s=8.0, last_output_s=17.95)
    # The whole-life tenths would have compared start-up (~220 MB) with the idle tail (900 MB).
    assert window["rss_mb_second_tenth"] == 450.0
    assert window["rss_mb_last_tenth"] == 450.0
    assert window["growth"] == 0.0
    assert window["rss_mb_at_first_output"] == 450.0 and window["rss_mb_at_end"] == 450.0
    assert window["scoring_samples"] == 100 and window["samples_per_tenth"] == 10
    assert "first output" in window["window"]


def test_the_soak_window_reports_growth_inside_the_scoring_period() -> None:
    samples = [(float(i), (300 + i) * MB) for i in range(100)]  # +1 MB a second throughout
    window = soak_window(samples, first_output_s=0.0, last_output_s=99.0)
    assert window["rss_mb_second_tenth"] == 319.0  # samples 10..19, highest
    assert window["rss_mb_last_tenth"] == 399.0  # samples 90..99
    assert window["growth"] == round(399 / 319 - 1, 4)
    assert (window["rss_mb_at_first_output"], window["rss_mb_at_end"]) == (300.0, 399.0)


def test_a_scoring_period_without_samples_is_an_error_not_a_flat_reading() -> None:
    with pytest.raises(ValueError, match="no RSS sample"):
        soak_window([(1.0, MB), (2.0, MB)], first_output_s=5.0, last_output_s=6.0)


def test_the_soak_line_states_its_window_and_old_results_still_render() -> None:
    window = soak_window(soak_samples(), first_output_s=8.0, last_output_s=17.95)
    line = soak_line({"contender": "ridestream-alo", "events": 1_000_000, **window})
    assert "while it scored (first output to last, 9.9 s)" in line
    assert "450.0 MB in the second tenth of that period, 450.0 MB in the last: +0.0%" in line
    old = {"contender": "ridestream-alo", "events": 1_000_000, "rss_mb_second_tenth": 304.7}
    old |= {"rss_mb_last_tenth": 463.0, "growth": 0.5195}
    assert "start-up included" in soak_line(old)


def test_a_passthrough_drain_too_short_to_sample_its_cpu_is_not_judged() -> None:
    result = {
        "ratios": {},
        "contenders": {
            "passthrough": {**contender(200_000), "cpu_s_per_1k_events": 0.0},
            "ridestream-alo": {**contender(50_000), "cpu_s_per_1k_events": 0.02},
        },
    }
    assert "CPU per event" not in "\n".join(targets_table(result))
