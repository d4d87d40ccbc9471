"""The project's top-level import names ``adapters`` and ``inference`` are common words: other distributions on PyPI
install packages of the same names. Checked at start (``bot.cli``, ``python -m inference serve``), before anything
imports them, so a clash is one sentence that says what to do instead of an ImportError deep in a traceback.

Nothing is imported here: the packages are located with ``importlib.util.find_spec`` and their ``__init__.py``
read as text (each carries ``MARKER``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from bot.errors import ConfigError

NAMES = ("adapters", "inference")
MARKER = "hanbot"  # in the first line of adapters/__init__.py and inference/__init__.py
DISTRIBUTION = "hanbot"


def check_import_names() -> None:
    """Raise ConfigError when ``adapters`` or ``inference`` is not this project's, or is shared with another
    installed distribution (uninstalling that one would delete files of this one)."""
    home = Path(__file__).resolve().parents[1]  # the folder that holds bot/, adapters/ and inference/
    for name in NAMES:
        problem = _problem(name, home)
        if problem:
            raise ConfigError(problem)


def _problem(name: str, home: Path) -> str | None:
    owners = sorted(_other_distributions(name))
    advice = (
        f"install hanbot in its own virtual environment (python -m venv .venv), or remove the other package "
        f"({'pip uninstall ' + ' '.join(owners) if owners else 'pip uninstall <it>'}) and then reinstall hanbot"
    )
    spec = importlib.util.find_spec(name)
    location = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if location is None or location.parent.parent != home:
        where = location.parent if location is not None else "nowhere (not installed)"
        return (
            f"the import name {name!r} is not hanbot's: Python finds it at {where}, hanbot's is in {home}"
            f"{' (installed by ' + ', '.join(owners) + ')' if owners else ''}: {advice}"
        )
    if MARKER not in location.read_text(encoding="utf-8", errors="replace").splitlines()[0].lower():
        return f"the package {name!r} at {location.parent} was overwritten by another distribution: {advice}"
    if owners:
        return f"the package {name!r} at {location.parent} is shared with {', '.join(owners)}: {advice}"
    return None


def _other_distributions(name: str) -> set[str]:
    """Installed distributions that install the top-level package ``name``, the project's own left out."""
    owners = importlib.metadata.packages_distributions().get(name, [])
    return {owner for owner in owners if owner.lower().replace("_", "-") != DISTRIBUTION}
