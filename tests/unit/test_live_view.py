"""The demo's live view: what it shows is what was delivered, in whatever order it arrives."""

from __future__ import annotations

from stack.live_view import FleetView


def test_a_completed_ride_shows_start_predictions_that_arrive_after_its_completion() -> None:
    view = FleetView()
    view.on_event({"event_type": "ride_started", "event_id": "r-1:0", "ride_id": "r-1"}, 1000)
    view.on_event(
        {
            "event_type": "ride_completed",
            "event_id": "r-1:5",
            "ride_id": "r-1",
            "duration_minutes": 12.0,
            "tip_amount_usd": 2.0,
            "total_amount_usd": 15.5,
        },
        1500,
    )
    assert view.recent_rows() == [("r-1", "— / 12.0 min", "— / 2.0 $", "— / 15.5 $")]

    view.on_prediction(
        "tip",
        {
            "ride_id": "r-1",
            "source_event_id": "r-1:0",
            "source_event_type": "ride_started",
            "predicted_tip_usd": 1.75,
        },
        1040,
    )
    assert view.recent_rows()[0][2] == "1.8 / 2.0 $"
    assert view.services["tip"].predictions == 1 and view.services["tip"].percentile(0.99) == 40


def test_the_versions_cell_shows_a_switch_with_each_versions_live_error() -> None:
    from consumers.evaluator.join import FigureKey, Sums

    view = FleetView(labels={"aaa111": "tip v1", "bbb222": "tip v2"})
    for n, version in enumerate(["aaa111", "aaa111", "bbb222"]):
        view.on_prediction(
            "tip",
            {
                "ride_id": f"r-{n}",
                "source_event_id": f"r-{n}:0",
                "source_event_type": "ride_started",
                "predicted_tip_usd": 1.0,
                "model_name": "tip",
                "model_version": version,
            },
            1000,
        )
    view.on_evaluations({FigureKey("tip", "tip", "aaa111", "card"): Sums(2, 1.0, 3.0, 5.0)})
    assert view.serving_cell("tip") == "tip v1: 2 (rmse 1.58 over 2) → v2: 1"
    assert view.serving_cell("cost") == "—"
