"""The HTTP services' OpenAPI documents, as their apps generate them: written into schemas/openapi/ by
`ridestream schemas`, and checked there (a test and `ridestream schemas --check` fail when they drift)."""

from __future__ import annotations

from typing import Any

from schemas.json_schema import OPENAPI_DIR, drifted_schemas, write_schemas


def openapi_documents() -> dict[str, dict[str, Any]]:
    from consumers.estimate.service import Models, create_app
    from consumers.web import WebMetrics

    def not_loaded(_metrics: WebMetrics) -> Models:
        raise AssertionError("the document is generated without starting the app")

    return {"estimate.json": create_app(not_loaded).openapi()}


def write_openapi() -> list[str]:
    return [str(path) for path in write_schemas(OPENAPI_DIR, openapi_documents())]


def drifted_openapi() -> list[str]:
    return [f"openapi/{name}" for name in drifted_schemas(OPENAPI_DIR, openapi_documents())]
