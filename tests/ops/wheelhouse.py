"""A wheelhouse for offline installs, made from the distributions installed in this environment.

The tests must not reach the network, so a fresh virtual environment cannot download its dependencies. Every
dependency the project declares is already installed here (``scripts/setup.sh`` put it there from the registry):
``build_wheelhouse`` packs each installed distribution that a set of requirements needs, transitively, back into a
wheel (its files as recorded in RECORD, its dist-info, a fresh RECORD), and ``pip install --no-index --find-links``
installs from those. Distributions left out of the set (torch) are simply not there to install.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as metadata
import io
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed_distributions(requirements: Iterable[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requirements`` need, following each one's own requirements."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(spec) for spec in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not _applies(requirement, ""):
            continue
        name, extras = normal(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = found.setdefault(name, metadata.distribution(requirement.name))
        for spec in dist.requires or []:
            child = Requirement(spec)
            if child.marker is None or _applies(child, ""):
                todo.append(child)
            elif any(_applies(child, extra) for extra in extras):
                child.marker = None
                todo.append(child)
    return found


def _applies(requirement: Requirement, extra: str) -> bool:
    environment = {**default_environment(), "extra": extra}
    return requirement.marker is None or requirement.marker.evaluate(environment)  # type: ignore[arg-type]


def repack(dist: metadata.Distribution, out: Path) -> Path:
    """One installed distribution as a wheel in ``out``."""
    info = Path(str(dist._path))  # type: ignore[attr-defined]
    site = info.parent
    wheel_meta = (info / "WHEEL").read_text(encoding="utf-8")
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in wheel_meta.splitlines()
        if line.startswith("Tag:")
    ]
    tag = "-".join(".".join(dict.fromkeys(parts)) for parts in zip(*tags, strict=True))  # py2.py3-none-any
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    target = out / f"{name}-{dist.version}-{tag}.whl"
    files = sorted(
        {
            str(f)
            for f in dist.files or []
            if not str(f).startswith("..") and "__pycache__" not in str(f) and not str(f).endswith(".pyc")
        }
    )
    records = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as wheel:
        for rel in files:
            path = site / rel
            if rel.endswith("/RECORD") or not path.is_file():
                continue
            data = path.read_bytes()
            wheel.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append((rel, f"sha256={digest}", str(len(data))))
        record_name = f"{info.name}/RECORD"
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([*records, (record_name, "", "")])
        wheel.writestr(record_name, buffer.getvalue())
    return target


def build_wheelhouse(requirements: Iterable[str], out: Path) -> list[str]:
    """Wheels for every installed distribution ``requirements`` need; returns their normalised names."""
    out.mkdir(parents=True, exist_ok=True)
    dists = needed_distributions(requirements)
    for dist in dists.values():
        repack(dist, out)
    return sorted(dists)
