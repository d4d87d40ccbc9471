"""Exit codes a service manager can act on: usage error, configuration error, done (docs/operations.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import EXIT_CONFIG, EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]


def test_a_wrong_command_line_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["no-such-command"])
    assert exited.value.code == EXIT_USAGE


def test_a_wrong_setting_is_a_configuration_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HANBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HANBOT_ENGINE__KIND", "remote")  # without engine.remote_base_url
    assert main(["check-config"]) == EXIT_CONFIG
    assert "HANBOT_ENGINE__REMOTE_BASE_URL" in capsys.readouterr().err


def test_serve_without_a_platform_token_is_a_configuration_error(monkeypatch, tmp_path, capsys):
    for name in ("DISCORD_TOKEN", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HANBOT_DATA_DIR", str(tmp_path))
    assert main(["serve"]) == EXIT_CONFIG
    assert "DISCORD_TOKEN" in capsys.readouterr().err


def test_the_help_names_the_exit_codes():
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert f"{EXIT_CONFIG} configuration error" in " ".join(result.stdout.split())
