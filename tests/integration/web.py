"""Helpers of the HTTP tests: a `ridestream` HTTP service as a real process, and schemathesis's generated
requests against its OpenAPI document."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.topics import REPO

WAIT_S = 60.0


class Http:
    """A `ridestream` HTTP service as a process, ready once its /readyz says so."""

    def __init__(self, command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stack.cli", *command, "--port", str(port)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{self.url} never became ready"
            time.sleep(0.2)  # polls /readyz: the readiness check itself

    def stop(self) -> int:
        """SIGTERM, and the exit status: uvicorn re-raises the signal once it has shut down cleanly."""
        self.process.terminate()
        code = self.process.wait(30)
        return 0 if code == -signal.SIGTERM else code


def generated_requests(url: str, examples: int, *options: str) -> subprocess.CompletedProcess[str]:
    """schemathesis's CLI against the service's own OpenAPI document: fails on any 5xx answer."""
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
            "--checks", "not_a_server_error", "--max-examples", str(examples), "--seed", "1",
            "--request-timeout", "10", *options,
        ],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip


def chromium() -> str:
    """Debian's chromium (.ci/run installs it); the test is skipped, saying why, where it is absent."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
