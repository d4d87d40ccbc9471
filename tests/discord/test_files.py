"""Attachments: a text file reaches the prompt under its name (downloaded from the fake CDN); a PDF and a picture are
named to the model as not read, and the user gets one sentence about them."""

from __future__ import annotations

from bot.texts import say
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.fakes import ScriptedEngine

NOTES = "회의 메모\n- 배포는 금요일\n- owner: minji\n"


async def test_a_text_file_reaches_the_prompt_with_its_name(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="요약했어요."))
    asker = fake_discord.new_user("Asker")

    fake_discord.post_message(
        fake_discord.general,
        asker,
        "이 파일 요약해 줘",
        mention_bot=True,
        files=[("notes.md", NOTES.encode(), "text/markdown; charset=utf-8")],
    )
    await fake_discord.wait_for(lambda: len(bot.engine.requests) == 1)

    asked = bot.engine.requests[0].turns[-1].content
    assert asked.endswith(f"이 파일 요약해 줘\n\n[file: notes.md]\n{NOTES.rstrip()}\n[end of file: notes.md]")
    (stored, _) = await bot.stored(fake_discord.general, 2)
    assert "- 배포는 금요일" in stored.content, "stored with the turn: later prompts still see it"
    assert stored.token_count > 20, "counted in the budget with the text"


async def test_a_pdf_and_a_picture_get_one_sentence_and_are_named_as_not_read(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="ok"))
    asker = fake_discord.new_user("Asker")

    fake_discord.post_message(
        fake_discord.general,
        asker,
        "what is in these?",
        mention_bot=True,
        files=[("report.pdf", b"%PDF-1.7 \x00\x01", "application/pdf"), ("cat.png", b"\x89PNG", "image/png")],
    )
    await fake_discord.wait_for(lambda: len(bot.engine.requests) == 1)

    asked = bot.engine.requests[0].turns[-1].content
    assert asked.endswith("what is in these?\n\n[file not read: report.pdf]\n\n[image not read: cat.png]")
    kb = bot.settings.chat.max_file_bytes // 1000
    notice = f"{say('files.not_text', 'en', names='report.pdf', kb=kb)} {say('files.image', 'en', names='cat.png')}"
    await fake_discord.wait_for(
        lambda: any(m["content"] == notice for m in fake_discord.bot_messages(fake_discord.general))
    )
    assert not [r for r in fake_discord.log("GET", r"^/attachments/") if r.path.endswith((".pdf", ".png"))]


async def test_a_file_over_the_limit_or_not_utf8_is_not_read(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="ok"))
    asker = fake_discord.new_user("Asker")
    big = ("x" * (bot.settings.chat.max_file_bytes + 1)).encode()

    fake_discord.post_message(
        fake_discord.general,
        asker,
        "read these",
        mention_bot=True,
        files=[("big.txt", big, "text/plain"), ("latin1.csv", "naïve;1\n".encode("latin-1"), None)],
    )
    await fake_discord.wait_for(lambda: len(bot.engine.requests) == 1)

    asked = bot.engine.requests[0].turns[-1].content
    assert asked.endswith("read these\n\n[file not read: big.txt]\n\n[file not read: latin1.csv]")
