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
