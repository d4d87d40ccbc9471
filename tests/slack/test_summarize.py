"""/summarize in Slack: a thread named by its link is read with conversations.replies, a channel with
conversations.history (from the fake Slack); the messages reach the engine and the summary streams into the thread
(or the channel); nothing is stored."""

from __future__ import annotations

from adapters.slack.mrkdwn import to_mrkdwn
from bot.domain import ConversationKey
from bot.texts import say
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import TEAM
from tests.slack.harness import SlackBot, command_form

SUMMARY = "They agreed to ship on Friday; Minsu writes the release notes."


def link(ts: str, channel: str = "C1") -> str:
    return f"https://team.slack.com/archives/{channel}/p{ts.replace('.', '')}"


async def summarize(bot: SlackBot, text: str, *, user: str = "UALICE") -> str:
    answered = len(bot.fake.responses)
    status, _ = await bot.post_command(
        command_form(bot.fake, "/summarize", user=user, channel="C1", text=text)
    )
    assert status == 200
    await bot.fake.wait_until(lambda: len(bot.fake.responses) > answered)
    return str(bot.fake.responses[-1]["text"])


async def test_summarize_a_thread_named_by_its_link(start_bot):
    bot = await start_bot(engine=ScriptedEngine(reply=SUMMARY), native_streaming=False)
    fake = bot.fake
    fake.say("C1", "UMINSU", "unrelated top-level message")
    parent = fake.say("C1", "UALICE", "Can we ship on Friday?")
    fake.say("C1", "UMINSU", "Yes, and I will write the release notes.", thread_ts=parent)
    fake.say("C1", "UALICE", "Great, thanks!", thread_ts=parent)

    answer = await summarize(bot, link(parent))

    assert answer == to_mrkdwn(say("cmd.summarize.done", "en", count=3))
    assert [c.args["ts"] for c in fake.called("conversations.replies")] == [parent]
    (request,) = bot.engine.requests
    assert request.turns[0].content == say("summarize.instruction", "en")
    assert request.turns[1].content.splitlines()[-3:] == [
        "Alice: Can we ship on Friday?",
        "민수: Yes, and I will write the release notes.",
        "Alice: Great, thanks!",
    ]
    assert "unrelated" not in request.turns[1].content
    await fake.wait_until(lambda: [m.text for m in fake.replies("C1", parent)] == [SUMMARY])
    assert bot.store is not None
    assert bot.store.history(ConversationKey("slack", TEAM, "C1", parent)) == []  # nothing of it is stored


async def test_summarize_the_channels_last_messages_in_its_language(start_bot):
    bot = await start_bot(engine=ScriptedEngine(reply="요약입니다."), native_streaming=False)
    fake = bot.fake
    fake.say("C1", "UALICE", "old message, left out")
    fake.say("C1", "UMINSU", "배포는 금요일에 해요.")
    fake.say("C1", "UALICE", "좋아요, 릴리스 노트는 민수 님이 써 주세요.")

    answer = await summarize(bot, "count:2")

    assert answer == to_mrkdwn(say("cmd.summarize.done", "en", count=2))
    assert fake.called("conversations.history")
    (request,) = bot.engine.requests
    assert request.turns[0].content == say("summarize.instruction", "ko")  # the conversation's language
    assert "old message" not in request.turns[1].content
    assert request.turns[1].content.splitlines()[-1] == "Alice: 좋아요, 릴리스 노트는 민수 님이 써 주세요."
    await fake.wait_until(lambda: [m.text for m in fake.replies("C1")] == ["요약입니다."])


async def test_a_thread_slack_will_not_give_gets_one_sentence_and_no_request(start_bot):
    bot = await start_bot(engine=ScriptedEngine(reply="never"), native_streaming=False)

    answer = await summarize(bot, link("1712345678.123456"), user="UMINSU")  # no such thread

    assert answer == to_mrkdwn(say("cmd.summarize.cannot_read", "ko"))
    assert bot.fake.called("conversations.replies")
    assert bot.engine.requests == []
