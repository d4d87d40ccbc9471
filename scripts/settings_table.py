"""Print the README's settings table from the Settings model (so the two never drift; a test compares them)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

from pydantic import BaseModel

from bot.settings import SECRET_FIELDS, Settings


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    for name, field in model.model_fields.items():
        if name in SECRET_FIELDS:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, f"{prefix}{name}__")
            continue
        default = field.get_default(call_default_factory=True)
        shown = json.dumps(default, ensure_ascii=False, default=str)
        if len(shown) > 60:
            shown = shown[:57] + "…"
        yield f"HANBOT_{prefix}{name}".upper(), shown, (field.description or "").replace("|", "\\|")


def table() -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{var}` | `{default}` | {meaning} |" for var, default, meaning in rows(Settings)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
