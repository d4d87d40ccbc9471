"""The core imports no platform SDK and no torch; adapters and engines never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = (
    "discord",
    "slack_bolt",
    "slack_sdk",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "adapters",
    "inference",
)
COMPOSITION_ROOT = {"bot/app.py", "bot/cli.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(folder: str, forbidden: tuple[str, ...], allowed: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed:
            continue
        for module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{rel} imports {module}")
    return found


def test_core_imports_no_platform_sdk_no_torch_and_no_outer_layers() -> None:
    assert offenders("bot", FORBIDDEN_IN_CORE, COMPOSITION_ROOT) == []


def test_composition_root_imports_only_what_it_wires() -> None:
    for rel in COMPOSITION_ROOT:
        modules = imported_modules(REPO / rel)
        assert not any(m.split(".")[0] in {"discord", "slack_bolt", "slack_sdk", "torch"} for m in modules), (
            rel
        )


def test_adapters_do_not_import_inference_and_inference_does_not_import_adapters() -> None:
    assert offenders("adapters", ("inference", "torch", "transformers")) == []
    assert offenders("inference", ("adapters", "discord", "slack_bolt", "slack_sdk")) == []


def test_the_check_itself_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import torch\nfrom slack_sdk.web import WebClient\n")
    assert imported_modules(sample) == {"torch", "slack_sdk.web"}
