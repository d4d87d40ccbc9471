"""The app manifest asks for what the adapter uses: its events, its commands, Socket Mode, the scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.slack.adapter import BOT_EVENTS
from adapters.slack.files import SCOPE as FILES_SCOPE
from adapters.slack.history import SCOPES as HISTORY_SCOPES
from adapters.slack.uploads import SCOPE as UPLOAD_SCOPE
from bot.app import build_core, slack_adapter
from bot.settings import load_settings
from tests.fakes import ScriptedEngine

yaml = pytest.importorskip("yaml")

MANIFEST = Path(__file__).resolve().parents[2] / "adapters" / "slack" / "manifest.yaml"


def test_the_manifest_matches_the_adapter(sqlite_store, tmp_path):
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    settings = load_settings(data_dir=tmp_path / "data", scheduler={"enabled": False})
    registry = build_core(
        settings, engine=ScriptedEngine(), store=sqlite_store
    ).commands  # as the bot has them

    commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    assert commands == {f"/{spec.name}" for spec in registry.specs()}
    finetune = next(c for c in manifest["features"]["slash_commands"] if c["command"] == "/finetune")
    spec = registry.get("finetune")
    assert spec is not None
    hint = finetune["usage_hint"].split(" | ")
    assert [word.split()[0] for word in hint] == list(spec.options[0].choices), "the hint names every action"
    assert finetune["should_escape"] is True, "/finetune try #channel needs the channel's id, not its name"
    assert manifest["settings"]["socket_mode_enabled"] is True
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {
        "app_mentions:read",
        "im:history",
        "channels:history",
        "chat:write",
        "users:read",
        "commands",
    } <= scopes


def test_the_manifest_subscribes_to_the_events_the_adapter_listens_to_with_their_scopes(
    sqlite_store, tmp_path
):
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    settings = load_settings(data_dir=tmp_path / "data", scheduler={"enabled": False})
    listened = set(slack_adapter(settings, sqlite_store).listeners())

    assert {event.split(".")[0] for event in BOT_EVENTS} == listened, "every listener has its subscriptions"
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == set(BOT_EVENTS)
    assert set(BOT_EVENTS.values()) <= set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"reaction_added", "reaction_removed"} <= set(BOT_EVENTS), "👍/👎 feedback"
    assert FILES_SCOPE in manifest["oauth_config"]["scopes"]["bot"], "shared text files are downloaded"
    assert set(HISTORY_SCOPES) <= set(manifest["oauth_config"]["scopes"]["bot"]), "/summarize reads history"
    assert UPLOAD_SCOPE in manifest["oauth_config"]["scopes"]["bot"], "the end of a fine-tune posts a picture"
