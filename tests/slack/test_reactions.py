"""👍/👎 (:+1: / :-1:) on the bot's replies become feedback rows (bot.feedback), signed reaction events posted to
the bot as Slack posts them; reactions on other messages and from workspaces outside the allowlist are ignored."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from bot.domain import ConversationKey, Role
from bot.store.conversations import ConversationStore
from bot.store.models import Feedback
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import TEAM
from tests.slack.harness import SlackBot, envelope, mention_event, reaction_event

THREAD = "1700000500.000100"
KEY = ConversationKey("slack", TEAM, "C1", THREAD)


def votes(store: ConversationStore | None) -> list[tuple[int, str, int]]:
    assert store is not None
    with store.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        return [(row.message_id, row.user_id, row.value) for row in rows]


async def a_reply(bot: SlackBot) -> tuple[int, list[str]]:
    """Alice asks in a thread, the bot answers: (the stored reply's id, the ts of its Slack messages)."""
    await bot.post_event(envelope(mention_event("질문 있어요", THREAD), "EvR1"))
    await bot.fake.wait_until(lambda: len(bot.history(KEY)) == 2)
    assert bot.store is not None
    reply = bot.store.history(KEY)[1]
    assert reply.role is Role.ASSISTANT
    posts = [m.ts for m in bot.fake.replies("C1", THREAD)]
    store = bot.store
    # the posts are linked to the reply just after it is stored
    await bot.fake.wait_until(lambda: all(store.reply_shown_in("slack", f"C1:{ts}") for ts in posts))
    return reply.id, posts


@pytest.mark.parametrize("native", [False, True], ids=["edited", "native"])
async def test_a_thumb_on_a_bot_reply_is_recorded_and_removing_it_removes_it(start_bot, fake_slack, native):
    bot = await start_bot(engine=ScriptedEngine(reply="답이에요."), native_streaming=native)
    reply_id, posts = await a_reply(bot)
    assert posts

    await bot.post_event(envelope(reaction_event("+1", "C1", posts[0], user="UMINSU"), "EvR2"))
    await fake_slack.wait_until(lambda: votes(bot.store) == [(reply_id, "UMINSU", 1)])

    await bot.post_event(envelope(reaction_event("-1::skin-tone-3", "C1", posts[0], user="UMINSU"), "EvR3"))
    await fake_slack.wait_until(lambda: votes(bot.store) == [(reply_id, "UMINSU", -1)])

    removed = reaction_event("-1::skin-tone-3", "C1", posts[0], user="UMINSU", removed=True)
    await bot.post_event(envelope(removed, "EvR4"))
    await fake_slack.wait_until(lambda: votes(bot.store) == [])


async def test_only_thumbs_on_the_bots_own_replies_count(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="답이에요."), native_streaming=False)
    reply_id, posts = await a_reply(bot)

    ignored = [
        reaction_event("+1", "C1", THREAD, user="UMINSU", item_user="UALICE"),  # on Alice's question
        reaction_event("tada", "C1", posts[0], user="UMINSU"),  # not a thumb
        reaction_event("+1", "C1", posts[0], user="UBOT"),  # the bot itself
        reaction_event("-1", "C1", posts[0], user="UMINSU", removed=True),  # never cast: nothing to remove
    ]
    for number, event in enumerate(ignored):
        status, _ = await bot.post_event(envelope(event, f"EvI{number}"))
        assert status == 200
    await bot.post_event(envelope(reaction_event("+1", "C1", posts[-1], user="UADMIN"), "EvR5"))
    await fake_slack.wait_until(lambda: votes(bot.store) == [(reply_id, "UADMIN", 1)])


async def test_reactions_from_workspaces_outside_the_allowlist_are_ignored(start_bot, fake_slack, caplog):
    bot = await start_bot(native_streaming=False, allowed_team_ids=["T0THERS"])
    assert bot.store is not None
    # a reply shown in this workspace before the allowlist left it out
    question = bot.store.add_message(KEY, Role.USER, "질문", platform_message_id=f"C1:{THREAD}")
    reply = bot.store.add_message(KEY, Role.ASSISTANT, "답", reply_to=question.id if question else None)
    assert reply is not None
    bot.store.link_posts(reply.id, "slack", ["C1:1700000501.000100"])

    with caplog.at_level(logging.INFO, logger="bot.feedback"):
        await bot.post_event(envelope(reaction_event("+1", "C1", "1700000501.000100"), "EvR6"))
        await fake_slack.wait_until(lambda: "does not serve" in caplog.text)

    assert votes(bot.store) == []
