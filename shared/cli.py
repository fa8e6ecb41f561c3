"""`python -m shared.cli ...`: the name scripts already use for the `ridestream` CLI, which now lives with
the operator's stack (stack/cli.py). Nothing imports this module; the import-linter contract in
pyproject.toml lists it as an entry point allowed to reach up."""

from __future__ import annotations

if __name__ == "__main__":
    from stack.cli import main

    main()
