"""Socket Mode: the real AsyncSocketModeHandler connects to the fake's websocket, acks envelopes and answers.
And the start fails clearly when a token is missing or refused."""

from __future__ import annotations

import pytest

from bot.app import slack_adapter
from bot.domain import ConversationKey
from bot.errors import ConfigError
from bot.texts import say
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import TEAM
from tests.slack.harness import ENV, dm_event, envelope, make_settings

DM = ConversationKey("slack", TEAM, "D1")


async def test_an_envelope_pushed_over_the_socket_is_acknowledged_and_answered(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="socket reply"), mode="socket", native_streaming=False)
    assert fake_slack.called("apps.connections.open")

    envelope_id = await fake_slack.push(
        envelope(dm_event("hello over the socket", "1700000030.000100"), "Ev300")
    )

    await fake_slack.wait_until(
        lambda: any(a.get("envelope_id") == envelope_id for a in fake_slack.socket_acks)
    )
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    assert [m.text for m in fake_slack.replies("D1")] == ["socket reply"]

    # the same delivery again (Slack retries over the socket too): acknowledged, not answered again
    again = await fake_slack.push(envelope(dm_event("hello over the socket", "1700000030.000100"), "Ev300"))
    await fake_slack.wait_until(lambda: any(a.get("envelope_id") == again for a in fake_slack.socket_acks))
    assert len(bot.engine.requests) == 1


async def test_a_slash_command_over_the_socket_is_acknowledged_and_answered(start_bot, fake_slack):
    await start_bot(mode="socket")
    payload = {
        "team_id": TEAM,
        "channel_id": "D1",
        "user_id": "UALICE",
        "command": "/reset",
        "text": "",
        "response_url": fake_slack.response_url("socket-reset"),
        "trigger_id": "t1",
    }

    envelope_id = await fake_slack.push(payload, kind="slash_commands")

    await fake_slack.wait_until(
        lambda: any(a.get("envelope_id") == envelope_id for a in fake_slack.socket_acks)
    )
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["text"] == say("error.not_admin", "en")


@pytest.mark.parametrize(
    ("variable", "mode", "named"),
    [("SLACK_BOT_TOKEN", "http", "SLACK_BOT_TOKEN"), ("SLACK_APP_TOKEN", "socket", "SLACK_APP_TOKEN")],
)
async def test_a_refused_token_stops_the_start_with_a_clear_error(
    start_bot, fake_slack, monkeypatch, variable, mode, named
):
    monkeypatch.setenv(variable, f"{ENV[variable][:5]}revoked")

    with pytest.raises(ConfigError, match=named):
        await start_bot(mode=mode)


def test_a_missing_token_is_named_at_construction(tmp_path, fake_slack, sqlite_store, monkeypatch):
    monkeypatch.delenv("SLACK_APP_TOKEN")

    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        slack_adapter(make_settings(tmp_path, fake_slack, mode="socket"), sqlite_store)
