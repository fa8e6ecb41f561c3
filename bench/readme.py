"""Copy measured results into the docs: README and docs/*.md numbers come from results/ files, never by hand.

    python -m bench.readme

Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` with results/<file>.md for
NAME in bench, faults, producer, costs, profile, web, batch (any doc that has the markers).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {
    "bench": "results/bench.md",
    "faults": "results/faults.md",
    "producer": "results/producer.md",
    "costs": "results/scoring-costs.md",
    "profile": "results/service-profile.md",
    "web": "results/web.md",
    "batch": "results/batch.md",
}
DOCS = (
    "README.md",
    "docs/guarantees.md",
    "docs/scaling.md",
    "docs/performance.md",
    "docs/http.md",
    "docs/batch.md",
)


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> None:
    for doc in DOCS:
        path = REPO / doc
        if not path.is_file():
            continue
        text = path.read_text()
        for name, source in SECTIONS.items():
            result = REPO / source
            if result.is_file():
                text = replace_section(text, name, result.read_text())
        path.write_text(text)
        print(f"updated {doc}")


if __name__ == "__main__":
    main()
