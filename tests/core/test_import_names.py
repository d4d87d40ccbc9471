"""Another installed package named ``inference`` or ``adapters`` (both exist on PyPI): the bot says so at start and
what to do, instead of importing the wrong package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_bot(tmp_path: Path, *python_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bot check-config`` from an unrelated folder, with these folders first on the import path."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in (*python_path, REPO)),
        "HANBOT_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", "check-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def fake_distribution(site: Path, name: str, top_level: str) -> None:
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"{top_level}/__init__.py,,\n{info.name}/METADATA,,\n")


def test_the_project_s_own_packages_pass(tmp_path: Path) -> None:
    result = run_bot(tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_package_that_shadows_inference_is_a_configuration_error_that_says_what_to_do(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    (site / "inference").mkdir(parents=True)
    (site / "inference" / "__init__.py").write_text('"""Another project\'s inference package."""\n')
    fake_distribution(site, "inference-sdk", "inference")
    result = run_bot(tmp_path, site)
    assert result.returncode == 78, result.stderr  # EXIT_CONFIG
    message = result.stderr
    assert "'inference' is not hanbot's" in message and str(site / "inference") in message
    assert "inference-sdk" in message and "virtual environment" in message and "pip uninstall" in message
    assert "Traceback" not in message


def test_a_distribution_that_shares_the_adapters_folder_is_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "adapters", "adapters")  # AdapterHub's package installs a top-level `adapters`
    result = run_bot(tmp_path, site)
    assert result.returncode == 78, result.stderr
    assert "'adapters'" in result.stderr and "shared with adapters" in result.stderr
