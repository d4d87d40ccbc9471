"""The learning loop's commands typed in the real console adapter, on the real core (build_core) and SQLite store.

One command syntax (``name:value`` as Discord shows it, and the bare form), every command example of the docs, the
opt-out and its undo, what "too few examples" says, the kept held-out set after an opt-out, and the user's language.
The engine is a ScriptedEngine: these are about commands and texts, not about what the model says.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot.app import Core, build_core
from bot.commands import YES_WORDS, CommandContext, CommandOption, CommandSpec, parse_arguments
from bot.domain import Author, CommandReply, ConversationKey, Role
from bot.learning.dataset import (
    DatasetOptions,
    author_tag,
    build_dataset,
    held_out_examples,
    read_examples,
)
from bot.learning.service import HELD_OUT_NAME
from bot.settings import Settings, load_settings
from bot.store.learning_records import LearningRecords, RunStatus
from bot.store.models import Feedback
from bot.texts import say, say_both
from tests.fakes import ScriptedEngine

REPO = Path(__file__).resolve().parents[2]
CONSOLE = ConversationKey("console", "", "console")
ME = Author(id="local", display_name="local")  # the console's user
TEAMMATE = Author(id="teammate", display_name="Teammate")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        scheduler={"enabled": False},
        finetune={
            "min_examples": 1000,
            "eval_fraction": 0.25,
        },  # a run ends at "too few examples", no trainer
    )


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[Core]:
    built = build_core(settings, engine=ScriptedEngine(reply="네, 알겠어요."))
    yield built
    await built.finetune.aclose()
    built.store.engine.dispose()


async def console(core: Core, *lines: str) -> list[str]:
    """Type ``lines`` into the console; the bot's answers, one string each (multi-line answers joined)."""
    out = io.StringIO()
    adapter = ConsoleAdapter(stdin=io.StringIO("".join(f"{line}\n" for line in lines)), stdout=out)
    await adapter.start(core.chat.handle, core.commands)
    await adapter.wait_closed()
    answers = out.getvalue().split("봇: ")[1:]
    return [answer.split("\n사용자: ")[0].strip() for answer in answers]


def chat(
    core: Core, author: Author, *exchanges: tuple[str, str], key: ConversationKey = CONSOLE
) -> list[int]:
    """Store questions by ``author`` and the bot's replies; the replies' ids."""
    replies = []
    for question, reply in exchanges:
        turn = core.store.add_message(key, Role.USER, question, author=author)
        assert turn is not None
        stored = core.store.add_message(key, Role.ASSISTANT, reply, reply_to=turn.id)
        assert stored is not None
        replies.append(stored.id)
    return replies


# one command syntax


async def test_the_console_takes_discords_name_value_form_and_the_bare_one(core: Core) -> None:
    chat(core, ME, ("내 질문 1", "답 1"), ("내 질문 2", "답 2"))
    answers = await console(core, "/forget-me delete:yes", "/finetune action:status", "/finetune status")
    assert answers[0].splitlines() == [
        say("cmd.forget_me.done", "en"),
        say("cmd.forget_me.deleted", "en", count=2, replies=2),
    ]
    assert core.store.count_messages(CONSOLE) == 0
    assert answers[1] == answers[2] and answers[1].startswith("No fine-tune is running.")

    for typed in ("/forget-me delete: yes", "/forget-me yes", "/forget-me delete"):
        chat(core, ME, ("또 질문", "또 답"))
        answers = await console(core, typed)
        assert say("cmd.forget_me.deleted", "en", count=1, replies=1) in answers[0], typed
    assert core.store.count_messages(CONSOLE) == 0

    run = await console(core, "/finetune action:run")
    assert run[0].startswith("Fine-tune run #1 started.")
    await core.finetune.wait()
    assert (await console(core, "/finetune action:explode"))[0] == say("cmd.finetune.unknown_action", "en")


def test_parse_arguments_rules() -> None:
    async def nothing(_: CommandContext) -> CommandReply:
        raise AssertionError

    spec = CommandSpec(
        "x",
        "x",
        nothing,
        options=(
            CommandOption("action", "", choices=("run", "status")),
            CommandOption("delete", "", choices=("no", "yes")),
            CommandOption("note", ""),
        ),
    )
    assert parse_arguments(spec, "") == {}
    assert parse_arguments(spec, "run") == {"action": "run"}
    assert parse_arguments(spec, "run yes some words") == {
        "action": "run",
        "delete": "yes",
        "note": "some words",
    }
    assert parse_arguments(spec, "note:hi delete:no action:status") == {
        "note": "hi",
        "delete": "no",
        "action": "status",
    }
    assert parse_arguments(spec, "DELETE status") == {"delete": "yes", "action": "status"}
    assert parse_arguments(spec, "action: run a note") == {"action": "run", "delete": "a", "note": "note"}
    assert parse_arguments(spec, "https://example.com/x") == {"action": "https://example.com/x"}


# every command example in the docs


def _code_spans(path: Path) -> list[str]:
    return re.findall(r"`(/[a-z][^`]*)`", path.read_text(encoding="utf-8"))


def expand(example: str) -> list[str]:
    """`/finetune action:run|status`, `/forget-me [delete:yes]`, `/finetune run | status`: every form meant."""
    example = re.sub(r"\s*\\?\|\s*", "|", example.strip())  # a table cell writes | as \|
    optional = re.search(r"\[([^\[\]]*)\]", example)
    if optional:
        without = example[: optional.start()] + example[optional.end() :]
        within = example[: optional.start()] + optional.group(1) + example[optional.end() :]
        return expand(without) + expand(within)
    forms = []
    for word in example.split():
        name, colon, values = word.partition(":")
        forms.append([f"{name}:{v}" for v in values.split("|")] if colon else word.split("|"))
    return [" ".join(words) for words in itertools.product(*forms)]


def doc_examples(core: Core, path: Path) -> list[str]:
    names = {f"/{spec.name}" for spec in core.commands.specs()}
    return [form for span in _code_spans(path) if span.split()[0] in names for form in expand(span)]


def _check_arguments(spec: CommandSpec, words: str, *, discord: bool) -> None:
    args = parse_arguments(spec, words)
    options = {o.name: o for o in spec.options}
    for name, value in args.items():
        choices = options[name].choices
        assert not choices or value in choices or ("yes" in choices and value in YES_WORDS), (
            spec.name,
            words,
        )
    if discord:  # Discord's box takes only option:value pairs with the choices it offers
        for word in words.split():
            name, colon, value = word.partition(":")
            assert colon and name in options, (spec.name, words)
            assert not options[name].choices or value in options[name].choices, (spec.name, words)


@pytest.mark.parametrize(
    ("doc", "discord"),
    [("README.md", True), ("docs/learning.md", True), ("docs/discord.md", True), ("docs/slack.md", False)],
)
async def test_every_command_example_in_the_docs_works_where_it_is_shown(
    core: Core, doc: str, discord: bool
) -> None:
    """README, learning.md and discord.md show commands for Discord too: option:value only. slack.md's examples go
    through the parser Slack and the console share. Every example but Slack's thread links runs in the console."""
    examples = doc_examples(core, REPO / doc)
    assert examples, doc
    refusals = {
        say(key, lang)
        for key in ("error.unknown_command", "cmd.finetune.unknown_action", "cmd.forget_me.undo_and_delete")
        for lang in ("en", "ko")
    }
    for example in examples:
        name, _, words = example.partition(" ")
        spec = core.commands.get(name)
        assert spec is not None, example
        _check_arguments(spec, words, discord=discord)
    runnable = [e for e in examples if "://" not in e]
    answers = await console(core, *runnable)
    assert len(answers) == len(runnable)
    for example, answer in zip(runnable, answers, strict=True):
        assert answer and answer not in refusals, (example, answer)
    await core.finetune.wait()


# opt-outs


async def test_forget_me_undo_opts_back_in(core: Core, settings: Settings) -> None:
    records = LearningRecords(core.store)
    assert (await console(core, "/forget-me undo"))[0] == say("cmd.forget_me.not_opted_out", "en")
    await console(core, "/forget-me")
    assert records.opted_out_users() == {"console:local"}
    answers = await console(core, "/forget-me undo:yes", "/forget-me delete:yes undo:yes")
    assert answers[0] == say("cmd.forget_me.undone", "en")
    assert answers[1] == say("cmd.forget_me.undo_and_delete", "en")
    assert records.opted_out_users() == set()
    assert [a for a, _, _ in records.audit_events(["opt_out", "opt_in"])] == ["opt_out", "opt_in"]

    settings.finetune.opted_out_users = ["console:local"]  # an admin's setting cannot be undone by the user
    assert (await console(core, "/forget-me undo"))[0] == say("cmd.forget_me.kept_out_by_settings", "en")


async def test_too_few_examples_says_what_was_left_out_and_why(core: Core, settings: Settings) -> None:
    settings.finetune.min_examples = 5
    settings.finetune.excluded_channels = ["secret"]
    settings.finetune.require_positive_feedback = False
    chat(core, ME, *[(f"내 질문 {i}", f"답 {i}") for i in range(3)])
    _, disliked = chat(core, TEAMMATE, ("teammate asks", "answer"), ("and this?", "a bad answer"))
    chat(core, TEAMMATE, ("hidden", "hidden answer"), key=ConversationKey("console", "", "secret"))
    with core.store.session() as session, session.begin():
        session.add(Feedback(message_id=disliked, user_id="teammate", value=-1))

    answers = await console(core, "/forget-me", "/finetune action:run")
    assert answers[1].startswith("Fine-tune run #1 started.")
    run = await core.finetune.wait()
    assert run is not None and run.status is RunStatus.REJECTED
    status = await console(core, "/finetune status")
    assert (
        "not promoted (too few examples: 1 < 5; left out: 3 replies to people who opted out, "
        "1 in excluded channels, 1 by feedback)."
    ) in status[0]
    korean = await console(core, "내 상태 알려줘", "/finetune status")
    assert "적용하지 않았어요 (학습 예시가 너무 적어요: 1개 < 최소 5개." in korean[1]
    assert "학습 제외를 요청한 사람과의 대화 3개, 제외된 채널 1개, 피드백 기준 1개" in korean[1]
    assert "평가" not in korean[1]  # "too few examples" is not "failed the evaluation"


async def test_an_opt_out_tops_up_the_active_versions_held_out_set(core: Core, settings: Settings) -> None:
    """The active version kept the held-out examples of its run; one person opts out, their examples leave that
    set, and today's held-out examples of everyone else take their place: the next gate is not weaker."""
    chat(core, ME, *[(f"제 질문 {i}번이에요", f"제 질문 {i}번의 답") for i in range(24)])
    chat(core, TEAMMATE, *[(f"teammate question {i}", f"answer {i}") for i in range(8)])
    options = DatasetOptions.from_settings(settings)
    files = build_dataset(core.store, options, settings.data_dir / "promoted-run")
    version_dir = settings.lora_dir / "versions" / "v1"
    version_dir.mkdir(parents=True)
    files.eval_path.rename(version_dir / HELD_OUT_NAME)
    records = LearningRecords(core.store, data_dir=settings.data_dir)
    run = records.create_run(trigger="manual", started_by="console:local", owner="test")
    records.promote(name="v1", path=str(version_dir), run_id=run.id, eval_loss=1.0, actor="console:local")
    kept_before = read_examples(version_dir / HELD_OUT_NAME)
    mine = author_tag("console:local")
    assert any(mine in e.authors for e in kept_before)

    # the teammate kept talking after v1 was promoted
    chat(core, TEAMMATE, *[(f"later question {i}", f"later answer {i}") for i in range(40)])
    await console(core, "/forget-me")

    kept = read_examples(version_dir / HELD_OUT_NAME)
    assert not any(mine in e.authors for e in kept)
    fresh = held_out_examples(core.store, DatasetOptions.from_settings(settings, opted_out={"console:local"}))
    assert {e.identity for e in fresh} <= {e.identity for e in kept}
    assert len(kept) >= len([e for e in kept_before if mine not in e.authors]) + 1
    trained_on = read_examples(files.train_path)
    assert not {e.identity for e in trained_on} & {e.identity for e in kept}  # nothing v1 learned from


# the user's language


async def test_every_answer_in_the_users_language(core: Core) -> None:
    answers = await console(core, "")  # nothing written yet here: both languages
    assert answers[0] == say_both("chat.empty")
    answers = await console(
        core,
        "위키는 어디 있어요?",
        "",
        "/finetune status",
        "/forget-me",
        "/forget-me undo",
        "/help",
        "/finetune action:explode",
        "/no-such-command",
    )
    assert answers[1] == say("chat.empty", "ko")
    assert answers[2].startswith("진행 중인 학습은 없어요.") and "사용 중: 기본 모델" in answers[2]
    assert answers[3] == say("cmd.forget_me.done", "ko")
    assert answers[4] == say("cmd.forget_me.undone", "ko")
    help_lines = answers[5].splitlines()
    assert help_lines[0] == "명령어 / Commands:"
    usage = [line.strip() for line in help_lines if line.startswith("    ")]
    assert usage and all(re.search("[가-힣]", line) for line in usage), usage
    assert answers[6] == say("cmd.finetune.unknown_action", "ko")
    assert answers[7] == say("error.unknown_command", "ko")
    english = await console(core, "Where is the wiki?", "/finetune status", "")
    assert english[1].startswith("No fine-tune is running.")
    assert english[2] == say("chat.empty", "en")


def test_help_usage_texts_match_the_commands(core: Core) -> None:
    """The English usage in texts.py is the CommandSpec's own: a changed usage needs its Korean updated too."""
    from bot.texts import TEXTS

    for spec in core.commands.specs():
        key = f"help.usage.{spec.name}"
        assert key in TEXTS, spec.name
        assert TEXTS[key]["en"] == spec.usage, spec.name
