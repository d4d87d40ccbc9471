"""The Slack adapter's pure parts: Markdown → mrkdwn, event mapping, slash-command arguments, pacing, pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.slack.commands import arguments, conversation_for_command, thread_from_link
from adapters.slack.events import clean_text, direct_message, is_user_text, thread_message
from adapters.slack.mrkdwn import ZWSP, to_mrkdwn
from adapters.slack.pacing import UpdatePacer
from adapters.slack.pieces import LIMIT, render_pieces
from bot.commands import CommandOption, CommandSpec
from bot.domain import CommandReply, ConversationKey

# Markdown → mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and *italic*", "*bold* and _italic_"),
        ("__bold__ and ~~gone~~", "*bold* and ~gone~"),
        ("[Slack](https://slack.com/?a=1&b=2)", "<https://slack.com/?a=1&amp;b=2|Slack>"),
        ("see <https://example.com>", "see <https://example.com>"),
        ("# 제목", "*제목*"),
        ("- one\n  - two\n* three", "• one\n    ◦ two\n• three"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("```python\nif a < b:\n    x = **y**\n```", "```\nif a &lt; b:\n    x = **y**\n```"),
        ("```\nstill streaming", "```\nstill streaming\n```"),
        ("`code`를 실행하세요", "`code` 를 실행하세요"),
        ("설치는`pip`로", "설치는 `pip` 로"),
        ("call `f(**kw)` now", "call `f(**kw)` now"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("**중요**합니다", f"*중요*{ZWSP}합니다"),
        ("정말*중요*해요", f"정말{ZWSP}_중요_{ZWSP}해요"),
        ("---", "──────────"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown, mrkdwn):
    assert to_mrkdwn(markdown) == mrkdwn


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([*"ab 가나\n*_~`[]()<>&#-!.다요", "```", "](http://x)"]), max_size=120).map(
        "".join
    )
)
def test_conversion_never_fails_and_leaves_no_raw_angle_brackets(markdown):
    converted = to_mrkdwn(markdown)
    assert not any(mark in converted for mark in "\x00\x01\x02\x03")
    assert converted.count("<") == converted.count(">")  # the only brackets left are links this module wrote


# pieces


def test_pieces_stay_under_the_limit_even_when_escaping_grows_the_text():
    text = ("x < y & z > w. " * 700).strip()  # each line grows by escaping
    pieces = render_pieces(text)
    assert len(pieces) > 1
    assert all(len(p) <= LIMIT for p in pieces)
    assert "".join(pieces).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == text


def test_a_code_block_cut_in_two_is_closed_and_reopened():
    text = "intro\n\n```python\n" + "\n".join(f"print({i})" for i in range(800)) + "\n```\nend"
    pieces = render_pieces(text)
    assert len(pieces) >= 2
    assert all(p.count("```") % 2 == 0 for p in pieces)


# events


def test_mentions_links_and_entities_become_plain_text():
    text = "<@UBOT> ask <@U2|kim> about <https://x.io|the doc> in <#C9|general> &lt;3 &amp; more"
    assert clean_text(text, "UBOT") == "ask @kim about the doc (https://x.io) in #general <3 & more"


@pytest.mark.parametrize(
    ("event", "taken"),
    [
        ({"user": "U1", "channel": "D1", "ts": "1.1", "text": "hi"}, True),
        ({"user": "U1", "channel": "D1", "ts": "1.1", "subtype": "file_share"}, True),
        ({"user": "U1", "channel": "D1", "ts": "1.1", "subtype": "message_changed"}, False),
        ({"user": "U1", "channel": "D1", "ts": "1.1", "subtype": "message_deleted"}, False),
        ({"user": "U1", "channel": "D1", "ts": "1.1", "bot_id": "B2"}, False),
        ({"user": "UBOT", "channel": "D1", "ts": "1.1"}, False),
        ({"channel": "D1", "ts": "1.1", "subtype": "bot_message"}, False),
    ],
)
def test_only_new_user_text_is_taken(event, taken):
    assert is_user_text(event, "UBOT") is taken


def test_a_dm_is_one_conversation_and_a_mention_starts_its_thread():
    body = {"team_id": "T1"}
    dm = direct_message(body, {"channel": "D1", "user": "U1", "ts": "5.5", "text": "hi"}, "UBOT")
    assert dm.conversation == ConversationKey("slack", "T1", "D1")
    assert dm.target.thread_ts is None and dm.is_direct and dm.message_id == "D1:5.5"

    mention = thread_message(body, {"channel": "C1", "user": "U1", "ts": "6.6", "text": "<@UBOT> hi"}, "UBOT")
    assert mention.conversation == ConversationKey("slack", "T1", "C1", "6.6")
    assert mention.target.thread_ts == "6.6" and mention.text == "hi" and not mention.is_direct

    reply = thread_message(body, {"channel": "C1", "user": "U1", "ts": "7.7", "thread_ts": "6.6"}, "UBOT")
    assert reply.conversation == mention.conversation and reply.message_id == "C1:7.7"


# slash commands


async def _noop(ctx):  # pragma: no cover - never called
    return CommandReply("")


def test_command_words_go_to_the_options_in_order():
    spec = CommandSpec("finetune", "d", _noop, options=(CommandOption("action", "a", ("run", "status")),))
    assert arguments(spec, "status") == {"action": "status"}
    assert arguments(spec, "") == {}
    two = CommandSpec("x", "d", _noop, options=(CommandOption("a", "a"), CommandOption("b", "b")))
    assert arguments(two, "one two three") == {"a": "one", "b": "two three"}


def test_a_thread_link_names_the_thread_in_its_own_channel_only():
    link = "<https://team.slack.com/archives/C1/p1700000021000100?thread_ts=1>"
    assert thread_from_link(f"{link} now", "C1") == ("1700000021.000100", "now")
    assert thread_from_link(link, "C2") == ("", link)
    assert conversation_for_command({"team_id": "T", "channel_id": "D5"}, "") == ConversationKey(
        "slack", "T", "D5"
    )
    assert conversation_for_command({"team_id": "T", "channel_id": "C5"}, "1.2") == ConversationKey(
        "slack", "T", "C5", "1.2"
    )


# pacing


def test_edits_slow_down_when_replies_share_a_workspace():
    pacer = UpdatePacer(min_interval_s=1.0, budget_per_min=50)
    assert pacer.interval("T1") == pytest.approx(1.2)  # one reply: 50 a minute
    with pacer.streaming("T1"), pacer.streaming("T1"), pacer.streaming("T1"), pacer.streaming("T2"):
        assert pacer.interval("T1") == pytest.approx(3.6)  # three replies share T1's budget
        assert pacer.interval("T2") == pytest.approx(1.2)
    assert pacer.active("T1") == 0
    assert (
        UpdatePacer(min_interval_s=1.0, budget_per_min=600).interval("T1") == 1.0
    )  # never above 1 per second
