"""Training data from stored conversations: chat-format JSONL, redacted, de-duplicated, split for evaluation.

Each example is one assistant reply with what led to it: ``{"messages": [system, ...context, user..., assistant]}``.
Only the last assistant message is trained on; earlier assistant turns in the context carry ``"weight": 0`` (the
convention of OpenAI's chat fine-tuning format), so the trainer leaves them out of the loss.

How a conversation becomes examples:
1. Its turns are grouped into exchanges: the user turns since the last reply, then the reply.
2. Exchanges with a turn by someone who opted out (``/forget-me``, or ``finetune.opted_out_users``) are removed
   whole, reply included: the reply answers them. Excluded channels (``finetune.excluded_channels``: a conversation
   key ``platform:workspace:channel[:thread]``, a key prefix, or a bare channel id) are skipped entirely.
3. An exchange becomes an example when its reply is complete (not cut off, not failed) and its 👍/👎 score allows it:
   more 👎 than 👍 drops it; with ``require_positive_feedback`` only replies with more 👍 than 👎 are kept.
   The context is up to ``context_turns`` earlier turns of the remaining exchanges (complete replies only).
4. Every text is redacted (``bot.learning.redaction``) before anything is written; speaker names are not included.
5. Extra JSONL files of conversations (the same format) are added, redacted the same way.
6. Exact duplicates (same messages after redaction) are removed; a stable hash of each example decides whether it
   is held out for evaluation, so an example stays on the same side from one night to the next.

Each example also carries ``authors``: salted hashes of the users whose turns it holds, so a later ``/forget-me``
can remove their examples from the held-out sets kept beside LoRA versions (``purge_author``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.domain import ConversationKey, MessageStatus, Role
from bot.learning.redaction import redact
from bot.settings import Settings
from bot.store.conversations import ConversationStore
from bot.store.learning_data import conversations, scored_turns

_log = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"


@dataclass(frozen=True)
class DatasetOptions:
    system_prompt: str
    context_turns: int = 6
    eval_fraction: float = 0.2
    excluded_channels: tuple[str, ...] = ()
    opted_out_users: frozenset[str] = frozenset()  # "platform:user_id"
    require_positive_feedback: bool = False
    extra_datasets: tuple[Path, ...] = ()
    seed: int = 0
    min_eval_examples: int = 0  # the held-out split is topped up to this (at most half the examples)
    # which stored conversations this dataset may hold: (conversation key, id of its first speaker or None) -> bool;
    # None: all of them. A team with its own version gets only its own (bot.learning.tenants).
    belongs: Callable[[ConversationKey, str | None], bool] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, opted_out: Iterable[str] = ()) -> DatasetOptions:
        ft = settings.finetune
        return cls(
            system_prompt=settings.model.system_prompt,
            context_turns=ft.context_turns,
            eval_fraction=ft.eval_fraction,
            excluded_channels=tuple(ft.excluded_channels),
            opted_out_users=frozenset(ft.opted_out_users) | frozenset(opted_out),
            require_positive_feedback=ft.require_positive_feedback,
            extra_datasets=tuple(Path(p) for p in ft.extra_datasets),
            seed=ft.seed,
            min_eval_examples=ft.min_eval_examples,
        )


@dataclass(frozen=True)
class TrainMessage:
    role: Role
    content: str
    trained: bool = True  # only meaningful for assistant messages

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role.value, "content": self.content}
        if self.role is Role.ASSISTANT and not self.trained:
            data["weight"] = 0
        return data


@dataclass(frozen=True)
class Example:
    messages: tuple[TrainMessage, ...]
    authors: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """Canonical text of the messages: equal for exact duplicates."""
        return json.dumps([m.as_json() for m in self.messages], ensure_ascii=False, sort_keys=True)

    def to_line(self) -> str:
        return json.dumps(
            {"messages": [m.as_json() for m in self.messages], "authors": list(self.authors)},
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class DatasetFiles:
    train_path: Path
    eval_path: Path
    train_examples: int
    eval_examples: int
    counts: dict[str, int] = field(default_factory=dict)  # what was dropped and why (for logs and status)


@dataclass(frozen=True)
class _Turn:
    role: Role
    content: str
    author: str | None  # "platform:user_id" for user turns
    status: MessageStatus
    score: int  # 👍 minus 👎


@dataclass
class _Exchange:
    users: list[_Turn]
    reply: _Turn | None


def author_tag(author: str) -> str:
    """A salted hash of ``platform:user_id``: lets examples be found by author without storing the id."""
    return hashlib.sha256(f"hanbot-author:{author}".encode()).hexdigest()[:16]


def build_dataset(store: ConversationStore, options: DatasetOptions, out_dir: Path) -> DatasetFiles:
    """Write ``train.jsonl`` and ``eval.jsonl`` to ``out_dir`` and say how many examples each holds."""
    counts: Counter[str] = Counter()
    unique = _all_examples(store, options, counts)
    train, held_out = split_held_out(
        unique, options.eval_fraction, seed=options.seed, minimum=options.min_eval_examples
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = DatasetFiles(
        train_path=_write_jsonl(out_dir / TRAIN_FILE, train),
        eval_path=_write_jsonl(out_dir / EVAL_FILE, held_out),
        train_examples=len(train),
        eval_examples=len(held_out),
        counts=dict(counts),
    )
    _log.info("dataset built: train=%d eval=%d %s", files.train_examples, files.eval_examples, dict(counts))
    return files


def held_out_examples(store: ConversationStore, options: DatasetOptions) -> list[Example]:
    """The examples that every run with these options holds out (their stable hash is below the fraction), so no
    version trained with them has seen them: what tops up a kept held-out set that lost examples."""
    unique = _all_examples(store, options, Counter())
    return [e for e in unique if _held_out_score(e, options.seed) < options.eval_fraction]


def count_examples(store: ConversationStore, options: DatasetOptions) -> int:
    """How many examples a run with these options would have (train and held out): whether enough changed."""
    return len(_all_examples(store, options, Counter()))


def top_up(path: Path, examples: Sequence[Example]) -> int:
    """Add to the JSONL file at ``path`` the examples it does not hold yet. Returns how many were added."""
    present = {e.identity for e in read_examples(path)}
    new = [e for e in examples if e.identity not in present]
    if new:
        with path.open("a", encoding="utf-8") as out:
            for example in new:
                out.write(example.to_line() + "\n")
    return len(new)


def _all_examples(store: ConversationStore, options: DatasetOptions, counts: Counter[str]) -> list[Example]:
    examples = list(_examples_from_store(store, options, counts))
    examples.extend(_examples_from_files(options.extra_datasets, options.system_prompt, counts))
    return _without_duplicates(examples, counts)


# from the store


def _examples_from_store(
    store: ConversationStore, options: DatasetOptions, counts: Counter[str]
) -> Iterator[Example]:
    for conv_id, key, system_prompt in conversations(store):
        turns = _load_turns(store, conv_id, key.platform)
        if options.belongs is not None and not options.belongs(key, _first_speaker(turns)):
            counts["other_tenants_conversations"] += 1
            continue
        if _is_excluded(key, options.excluded_channels):
            counts["excluded_conversations"] += 1
            counts["excluded_replies"] += sum(t.role is Role.ASSISTANT for t in turns)
            continue
        exchanges = _exchanges(turns)
        kept = _without_opted_out(exchanges, options.opted_out_users, counts)
        yield from _examples_from_exchanges(kept, system_prompt or options.system_prompt, options, counts)


def _first_speaker(turns: Sequence[_Turn]) -> str | None:
    """The user id (without its platform) of the first user turn: whose DM this is."""
    author = next((t.author for t in turns if t.role is Role.USER and t.author), None)
    return author.split(":", 1)[1] if author else None


def _is_excluded(key: ConversationKey, patterns: Sequence[str]) -> bool:
    label = str(key)
    return any(label == p or label.startswith(p + ":") or key.channel == p for p in patterns)


def _load_turns(store: ConversationStore, conv_id: int, platform: str) -> list[_Turn]:
    return [
        _Turn(
            role=Role(row.role),
            content=row.content,
            author=f"{platform}:{row.author_id}" if row.author_id else None,
            status=MessageStatus(row.status),
            score=row.score,
        )
        for row in scored_turns(store, conv_id)
        if row.status != MessageStatus.FAILED.value and row.role != Role.SYSTEM.value
    ]


def _exchanges(turns: Sequence[_Turn]) -> list[_Exchange]:
    """The user turns since the last reply, then the reply (a trailing exchange may have no reply yet)."""
    exchanges: list[_Exchange] = []
    users: list[_Turn] = []
    for turn in turns:
        if turn.role is Role.USER:
            users.append(turn)
        else:
            exchanges.append(_Exchange(users, turn))
            users = []
    if users:
        exchanges.append(_Exchange(users, None))
    return exchanges


def _without_opted_out(
    exchanges: Sequence[_Exchange], opted_out: frozenset[str], counts: Counter[str]
) -> list[_Exchange]:
    kept = []
    for exchange in exchanges:
        if any(turn.author in opted_out for turn in exchange.users):
            counts["opted_out_exchanges"] += exchange.reply is not None
        else:
            kept.append(exchange)
    return kept


def _reply_usable(reply: _Turn, options: DatasetOptions, counts: Counter[str]) -> bool:
    if reply.status is not MessageStatus.COMPLETE:
        counts["incomplete_replies"] += 1
        return False
    if reply.score < 0 or (options.require_positive_feedback and reply.score <= 0):
        counts["feedback_dropped"] += 1
        return False
    return True


def _examples_from_exchanges(
    exchanges: Sequence[_Exchange], system_prompt: str, options: DatasetOptions, counts: Counter[str]
) -> Iterator[Example]:
    system = TrainMessage(Role.SYSTEM, redact(system_prompt))
    for index, exchange in enumerate(exchanges):
        reply = exchange.reply
        if reply is None or not exchange.users or not _reply_usable(reply, options, counts):
            continue
        context = _context(exchanges[:index], options.context_turns)
        messages = (
            system,
            *context,
            *(TrainMessage(Role.USER, redact(t.content)) for t in exchange.users),
            TrainMessage(Role.ASSISTANT, redact(reply.content)),
        )
        authors = {t.author for t in exchange.users if t.author}
        authors |= {a for ex in exchanges[:index] for a in (t.author for t in ex.users) if a}
        counts["examples_from_store"] += 1
        yield Example(messages, tuple(sorted(author_tag(a) for a in authors)))


def _context(earlier: Sequence[_Exchange], limit: int) -> list[TrainMessage]:
    """The last ``limit`` turns of the earlier exchanges (complete replies only), starting with a user turn."""
    turns: list[TrainMessage] = []
    for exchange in earlier:
        turns.extend(TrainMessage(Role.USER, redact(t.content)) for t in exchange.users)
        if exchange.reply is not None and exchange.reply.status is MessageStatus.COMPLETE:
            turns.append(TrainMessage(Role.ASSISTANT, redact(exchange.reply.content), trained=False))
    turns = turns[-limit:] if limit > 0 else []
    while turns and turns[0].role is not Role.USER:
        turns.pop(0)
    return turns


# from files


def _examples_from_files(
    paths: Sequence[Path], system_prompt: str, counts: Counter[str]
) -> Iterator[Example]:
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                example = parse_example(line, system_prompt)
                if example is None:
                    counts["extra_invalid_lines"] += 1
                    _log.warning("skipped an invalid line in extra dataset %s line=%d", path.name, number)
                    continue
                counts["examples_from_files"] += 1
                yield example


def parse_example(line: str, system_prompt: str) -> Example | None:
    """One JSONL line of ``{"messages": [{"role", "content", "weight"?}, ...]}``, redacted; None if invalid."""
    try:
        data = json.loads(line)
        raw = data["messages"]
        messages = [
            TrainMessage(Role(m["role"]), redact(str(m["content"])), trained=m.get("weight", 1) != 0)
            for m in raw
        ]
    except (ValueError, KeyError, TypeError):
        return None
    if not any(m.role is Role.ASSISTANT and m.trained and m.content.strip() for m in messages):
        return None
    if messages[0].role is not Role.SYSTEM:
        messages.insert(0, TrainMessage(Role.SYSTEM, redact(system_prompt)))
    return Example(tuple(messages), tuple(str(a) for a in data.get("authors", ())))


# de-duplication, split, files


def _without_duplicates(examples: Sequence[Example], counts: Counter[str]) -> list[Example]:
    seen: set[str] = set()
    unique = []
    for example in examples:
        identity = example.identity
        if identity in seen:
            counts["duplicates"] += 1
            continue
        seen.add(identity)
        unique.append(example)
    return unique


def _held_out_score(example: Example, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{example.identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_held_out(
    examples: Sequence[Example], fraction: float, *, seed: int = 0, minimum: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, held out): an example is held out when its stable hash falls below ``fraction``.

    The held-out side is topped up to ``minimum`` examples (but at most half of them) with the next-lowest hashes,
    so it stays the same examples from one night to the next. With two examples or more, each side gets one.
    """
    scored = sorted(((_held_out_score(e, seed), i) for i, e in enumerate(examples)))
    held = {i for score, i in scored if score < fraction}
    held |= {i for _, i in scored[: min(minimum, len(examples) // 2)]}
    if len(examples) >= 2:
        if not held:
            held.add(scored[0][1])
        if len(held) == len(examples):
            held.discard(scored[-1][1])
    train = [e for i, e in enumerate(examples) if i not in held]
    held_out = [e for i, e in enumerate(examples) if i in held]
    return train, held_out


def _write_jsonl(path: Path, examples: Sequence[Example]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(example.to_line() + "\n")
    return path


def read_examples(path: Path) -> list[Example]:
    """Examples of a JSONL file written here (system prompts are already in them)."""
    found = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                example = parse_example(line, "")
                if example is not None:
                    found.append(example)
    return found


def purge_author(path: Path, author: str) -> int:
    """Remove the examples that hold turns of ``author`` ("platform:user_id") from a JSONL file. Returns how many."""
    tag = author_tag(author)
    kept = []
    removed = 0
    for example in read_examples(path):
        if tag in example.authors:
            removed += 1
        else:
            kept.append(example)
    if removed:
        _write_jsonl(path, kept)
    return removed
