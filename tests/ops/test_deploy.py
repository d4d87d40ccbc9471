"""The deployment files a deployer starts from are checked here, since CI cannot pull images: the compose file parses
and its bot command is a real command of the image's entry point; the Dockerfile, the systemd unit, the example
settings and the lock file agree with the code."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from bot.cli import EXIT_CONFIG, EXIT_USAGE
from bot.settings import SECRET_FIELDS, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from example_config import example  # noqa: E402
from settings_table import rows  # noqa: E402

SETTING_VARIABLES = {var for var, _default, _meaning in rows(Settings)}
SECRET_VARIABLES = {
    "DISCORD_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "HANBOT_REMOTE_API_KEY",
    "OPENAI_API_KEY",
}
OTHER_VARIABLES = {"PGPASSWORD", "POSTGRES_PASSWORD", "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN"}


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))


def _entrypoint() -> list[str]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    found = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert found, "the Dockerfile has an exec-form ENTRYPOINT"
    return json.loads(found.group(1))


def _run_help(command: list[str]) -> subprocess.CompletedProcess[str]:
    assert command[:3] == ["python", "-m", "bot"], command
    return subprocess.run(
        [sys.executable, "-m", "bot", *command[3:], "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_runs_the_bot_on_postgres_with_a_command_the_image_has():
    compose = _compose()
    services = compose["services"]
    assert {"bot", "postgres", "vllm"} <= services.keys()
    assert services["vllm"]["profiles"] == ["vllm"]  # optional
    bot = services["bot"]
    assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"

    result = _run_help(_entrypoint() + bot["command"])
    assert result.returncode == 0, result.stderr
    assert "usage: hanbot serve" in result.stdout

    env = bot["environment"]
    assert env["HANBOT_STORE__DATABASE_URL"].startswith("postgresql+psycopg://hanbot@postgres:5432/")
    assert ":" not in env["HANBOT_STORE__DATABASE_URL"].split("//")[1].split("@")[0]  # no password in the URL
    for name in env:
        assert name in SETTING_VARIABLES | OTHER_VARIABLES, f"compose sets {name}, which nothing reads"
    port = env["HANBOT_OPS__PORT"]
    assert any(p.endswith(f":{port}") for p in bot["ports"])
    assert f":{port}/ready" in " ".join(bot["healthcheck"]["test"])


def test_the_dockerfile_builds_cpu_and_cuda_variants_at_the_locked_versions():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG VARIANT=cuda$", text, re.M)
    assert '"$VARIANT" = "cpu"' in text and '"$VARIANT" = "cuda"' in text
    assert 'pip install --no-cache-dir -c constraints.txt ".[discord,slack,local]"' in text
    assert _entrypoint() == ["python", "-m", "bot"]
    for folder in ("bot", "adapters", "inference", "migrations"):
        assert f"COPY {folder} ./{folder}" in text
    assert re.search(r"^USER hanbot$", text, re.M)


def test_the_systemd_unit_starts_a_real_command_and_does_not_restart_on_configuration_errors():
    unit = (REPO / "deploy" / "hanbot.service").read_text(encoding="utf-8")
    exec_start = re.search(r"^ExecStart=\S+/python (.*)$", unit, re.M)
    assert exec_start
    result = _run_help(["python", *exec_start.group(1).split()])
    assert result.returncode == 0, result.stderr
    prevent = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.M)
    assert prevent and {int(c) for c in prevent.group(1).split()} == {EXIT_USAGE, EXIT_CONFIG}


def test_the_example_toml_lists_every_setting_and_loads(tmp_path, monkeypatch):
    path = REPO / "hanbot.example.toml"
    assert path.read_text(encoding="utf-8") == example(), (
        "stale: run scripts/example_config.py > hanbot.example.toml"
    )
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert not set(data) & set(SECRET_FIELDS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANBOT_CONFIG", str(path))
    assert load_settings() == Settings(**data)


def test_the_example_environment_names_only_real_variables_and_loads(tmp_path, monkeypatch):
    values = dotenv_values(REPO / ".env.example")
    for name in values:
        assert name in SETTING_VARIABLES | SECRET_VARIABLES | OTHER_VARIABLES, (
            f".env.example sets unknown {name}"
        )
    assert SECRET_VARIABLES - {"OPENAI_API_KEY"} <= values.keys()
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text((REPO / ".env.example").read_text(encoding="utf-8"), encoding="utf-8")
    settings = load_settings()
    assert settings.ops.port == 9464 and settings.slack.mode == "socket"


def test_the_lock_file_pins_every_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {
        _normal(line.split("==")[0])
        for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    }
    wanted = project["dependencies"] + [
        spec for extra in project["optional-dependencies"].values() for spec in extra
    ]
    names = {_normal(re.split(r"[\[<>=;! ]", spec, maxsplit=1)[0]) for spec in wanted} - {
        "hanbot"
    }  # its extras
    assert names - pinned == set(), "run scripts/lock.sh and commit constraints.txt"
    assert (
        "hanbot[discord,slack,local]" in project["optional-dependencies"]["test"]
    )  # the tests get every part


def test_the_license_is_apache_2_and_the_package_says_so():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8").splitlines()[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md", "docs/gpu.md", "docs/learning.md"])
def test_docs_name_commands_that_exist(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    assert "huggingface-cli" not in text  # the installed hub client is `hf`
    for command in set(re.findall(r"python -m bot ([a-z][a-z-]+)", text)):
        result = _run_help(["python", "-m", "bot", command])
        assert result.returncode == 0, f"{doc}: python -m bot {command}: {result.stderr[-300:]}"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_commands_named_in_messages_and_docs_exist():
    from bot.cli import _parser

    subcommands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    known = set(subcommands.choices)
    files = [REPO / "README.md", *REPO.glob("docs/*.md")]
    files += [
        p for folder in ("bot", "inference", "adapters", "scripts") for p in (REPO / folder).rglob("*.py")
    ]
    named = {
        (path.relative_to(REPO).as_posix(), command)
        for path in files
        for command in re.findall(r"(?:hanbot|-m bot) ([a-z][a-z-]+)", path.read_text(encoding="utf-8"))
    }
    assert named, "the pattern finds the commands"
    unknown = {(where, c) for where, c in named if c not in known and c not in NOT_COMMANDS}
    assert unknown == set()


NOT_COMMANDS = {
    "and",
    "as",
    "hanbot",
    "series",
    "settings",
    "uses",
    "with",
    "is",
    "on",
    "the",
    "in",
    "to",
    "runs",
}
