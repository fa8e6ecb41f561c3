"""`python -m shared.faust_engine SERVICE [--batched]`: the name scripts already use for the Faust engine,
which now lives with the operator's stack (stack/faust_engine.py). Nothing imports this module; the
import-linter contract in pyproject.toml lists it as the one entry point allowed to reach up."""

from __future__ import annotations

if __name__ == "__main__":
    from stack.faust_engine import main

    main(prog="python -m shared.faust_engine")
