"""Files shared with a message (``file_share``): a text file is downloaded with the bot token and reaches the prompt
under its name; a PDF and a picture are named to the model as not read, and the user gets one sentence."""

from __future__ import annotations

from adapters.slack.mrkdwn import to_mrkdwn
from bot.domain import ConversationKey
from bot.texts import say
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import TEAM
from tests.slack.harness import dm_event, envelope

DM = ConversationKey("slack", TEAM, "D1")
CSV = "name,team\n민지,backend\nAlice,infra\n"


def file_share(text: str, ts: str, files: list[dict]) -> dict:
    return {**dm_event(text, ts), "subtype": "file_share", "files": files}


async def test_a_text_file_reaches_the_prompt_with_its_name(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="두 명이에요."), native_streaming=False)
    shared = fake_slack.add_file("people.csv", CSV.encode(), "text/csv")

    await bot.post_event(envelope(file_share("몇 명이야?", "1700000700.000100", [shared]), "EvF1"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)

    asked = bot.engine.requests[0].turns[-1].content
    assert asked.endswith(f"몇 명이야?\n\n[file: people.csv]\n{CSV.rstrip()}\n[end of file: people.csv]")
    assert fake_slack.downloads == [shared["id"]]


async def test_a_pdf_and_a_picture_get_one_sentence_and_are_not_downloaded(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="ok"), native_streaming=False)
    pdf = fake_slack.add_file("report.pdf", b"%PDF-1.7 \x00", "application/pdf")
    png = fake_slack.add_file("cat.png", b"\x89PNG", "image/png")

    await bot.post_event(envelope(file_share("", "1700000701.000100", [pdf, png]), "EvF2"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)

    asked = bot.engine.requests[0].turns[-1].content
    assert asked == "[file not read: report.pdf]\n\n[image not read: cat.png]"
    kb = bot.settings.chat.max_file_bytes // 1000
    notice = f"{say('files.not_text', 'en', names='report.pdf', kb=kb)} {say('files.image', 'en', names='cat.png')}"
    posted = [c.args["text"] for c in fake_slack.called("chat.postMessage")]
    assert to_mrkdwn(notice) in posted or notice in posted
    assert fake_slack.downloads == []
