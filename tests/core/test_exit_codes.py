"""Exit codes a service manager can act on: usage error, configuration error, done (docs/operations.md)."""

from __future__ import annotations

import os
import shutil
import socket
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


def test_tensor_parallel_in_the_bot_s_process_is_a_configuration_error_that_names_the_server(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("HANBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HANBOT_OPS__ENABLED", "false")
    monkeypatch.setenv("HANBOT_ENGINE__TENSOR_PARALLEL", "2")
    monkeypatch.setenv("HANBOT_MODEL__NAME_OR_PATH", str(tmp_path / "never-loaded"))
    assert main(["chat"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "-m inference serve" in err and "HANBOT_ENGINE__KIND=remote" in err


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


def _closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: the hub endpoint of a machine without network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _chat_offline(tmp_path: Path, model: str, typed: str) -> subprocess.CompletedProcess[str]:
    """``python -m bot chat`` on hub id ``model`` with the cache in tmp_path/hf and a hub that refuses connections
    (HF_HUB_OFFLINE unset: the bot has to find out by itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HANBOT_"))}
    env.update(
        PYTHONPATH=str(REPO),
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_loopback_port()}",
        HANBOT_DATA_DIR=str(tmp_path / "data"),
        HANBOT_MODEL__NAME_OR_PATH=model,
        HANBOT_MODEL__DEVICE_MAP="cpu",
        HANBOT_MODEL__DTYPE="float32",
    )
    return subprocess.run(
        [sys.executable, "-m", "bot", "chat"],
        cwd=REPO,
        env=env,
        input=typed,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unreachable_model_fails_once_with_a_clear_message(tmp_path):
    """Offline, a hub id not in the cache: one error naming the model and `hf download`, no retry warnings, 78."""
    result = _chat_offline(tmp_path, "nobody/no-such-model", "exit\n")  # an empty cache
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG, output
    errors = [
        line for line in output.splitlines() if "nobody/no-such-model" in line and "error" in line.lower()
    ]
    assert len(errors) == 1, output
    assert "hf download nobody/no-such-model" in errors[0]
    assert "Retrying" not in output and "WARNING" not in output, output


def test_offline_a_model_in_the_hub_cache_loads_from_it_without_retries(tmp_path, demo_model_dir):
    """The hub does not answer but the model is in the cache: one warning saying so, and the chat works."""
    repo = tmp_path / "hf" / "hub" / "models--hanbot--cached-demo"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for file in demo_model_dir.iterdir():
        if file.is_file():
            shutil.copy(file, snapshot / file.name)

    result = _chat_offline(tmp_path, "hanbot/cached-demo", "hello\nexit\n")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "봇: " in result.stdout, "the demo model answered"
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "using the cached copy" in warnings[0], output
    assert "Retrying" not in output
