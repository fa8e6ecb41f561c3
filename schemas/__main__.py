"""`python -m schemas`: regenerate the JSON Schema files from the pydantic models."""

from __future__ import annotations

from schemas.json_schema import write_schemas

if __name__ == "__main__":
    for path in write_schemas():
        print(path)
