"""The published documents: every event's JSON Schema and the AsyncAPI document (built by
``schemas.generate`` from the event models) and the agreement's JSON Schema (built here from the
agreement model, which stands on the event models, so ``schemas`` cannot build it without an
import pointing up). ``coxswain schemas generate`` writes them; ``--check`` and CI compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coxswain.core.agreement import Agreement
from schemas import generate
from schemas.generate import AGREEMENT_SCHEMA_FILE


def agreement_schema() -> dict[str, Any]:
    """The agreement document as editors and CI can check it (what the loader accepts as input)."""
    schema = Agreement.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://coxswain.dev/schemas/agreement.schema.json"
    schema["description"] = (
        "The sales-marketing agreement (YAML or JSON). Cross-references (pools, reps, personas) and "
        "threshold order are checked by `coxswain agreement validate`, beyond this schema."
    )
    return schema


def documents() -> dict[Path, str]:
    files = generate.documents()
    files[AGREEMENT_SCHEMA_FILE] = json.dumps(agreement_schema(), indent=2, sort_keys=True) + "\n"
    return files


def write_documents(check: bool = False) -> list[str]:
    """Return the files whose content differs; write them unless ``check``."""
    stale = []
    for path, content in documents().items():
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            stale.append(str(path.relative_to(generate.HERE.parent)))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content, encoding="utf-8")
    return stale
