"""The demo model: a tiny Llama-3-shaped model that knows the bot's FAQ by heart, built locally in seconds.

``ensure_demo_model(dir)`` returns a folder that ``from_pretrained`` (through ``inference.loading``) loads like the
real model: a byte-level BPE tokenizer trained on the bundled Korean and English text, Llama-3's special tokens and
chat template, ``generation_config.eos_token_id = [eot, end_of_text]``, and a small LlamaConfig with grouped-query
attention. It is trained on the FAQ (``FAQ``), rendered with the chat template and the default system prompt: each pair
alone, and conversations of FAQ turns in random order (a fresh draw every step, up to ``max_turns`` exchanges, every
answer trained), until greedy decoding reproduces every answer exactly after any earlier turns: it holds a
conversation, also one continued from an earlier session. Building reports its progress (``progress``; the default
prints one line on stderr).

The folder carries a stamp (a hash of the data, the configuration and this builder's version); it is rebuilt only
when that changes. Building holds a lock file, so parallel test processes build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

import bot
from bot.settings import DEFAULT_SYSTEM_PROMPT
from bot.texts import Lang, say
from inference.hf_compat import call_model, output_cache

_log = logging.getLogger(__name__)

LANGS: tuple[Lang, ...] = ("ko", "en")

DATA_DIR = Path(bot.__file__).resolve().parent / "data"
FAQ_PATH = DATA_DIR / "demo_faq.json"
CORPUS_PATH = DATA_DIR / "demo_corpus.txt"
STAMP_NAME = "hanbot-demo-stamp.json"
BUILDER_VERSION = 2

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    START_HEADER,
    END_HEADER,
    "<|reserved_special_token_2|>",
    EOT,
)
# Meta-Llama-3-Instruct's chat template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Llama-3's pre-tokenizer split (tiktoken's cl100k-style pattern).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the model's weights (part of the cache stamp)."""

    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 500000.0
    seed: int = 1234
    learning_rate: float = 3e-3
    max_steps: int = 900
    check_every: int = 20
    logit_margin: float = 2.0  # every answer token beats the runner-up by this much (robust greedy)
    min_token_prob: float = 0.95  # ... and has this probability at temperature 0.6 (top_p 0.9 keeps only it)
    conversations_per_step: int = 6  # random multi-turn conversations drawn fresh for every step
    max_turns: int = 10  # exchanges in the longest of them
    exact_steps: int = 3  # the criterion must hold on this many fresh draws in a row


DEMO_CONFIG = DemoConfig()


def load_faq() -> list[tuple[str, str]]:
    pairs = json.loads(FAQ_PATH.read_text(encoding="utf-8"))
    return [(str(q), str(a)) for q, a in pairs]


FAQ: list[tuple[str, str]] = load_faq()
SYSTEM_PROMPT = DEFAULT_SYSTEM_PROMPT


Progress = Callable[[str, int], None]  # (phase: "tokenizer" | "training" | "checking", percent)


def print_progress(phase: str, percent: int) -> None:
    """One line on stderr, rewritten in place on a terminal (a line per tenth elsewhere)."""
    line = " / ".join(
        say("demo.building", lang, phase=say(f"demo.phase.{phase}", lang), percent=percent) for lang in LANGS
    )
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if percent >= 100 else ""))
    elif percent % 10 == 0 or percent >= 100:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def ensure_demo_model(
    out_dir: Path, config: DemoConfig = DEMO_CONFIG, progress: Progress | None = print_progress
) -> Path:
    """Return ``out_dir`` holding the demo model, building it only when missing or out of date."""
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(config)
    if _stamp_matches(out_dir, fingerprint):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir):
        if _stamp_matches(out_dir, fingerprint):  # another process built it while we waited
            return out_dir
        return build_demo_model(out_dir, config, progress)


class _Reporter:
    """Calls ``progress`` only when the whole percent moves forward."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._last = -1

    def __call__(self, phase: str, percent: float) -> None:
        whole = max(0, min(100, int(percent)))
        if self._progress is not None and whole > self._last:
            self._last = whole
            self._progress(phase, whole)


def build_demo_model(
    out_dir: Path, config: DemoConfig = DEMO_CONFIG, progress: Progress | None = print_progress
) -> Path:
    """Build the demo model into ``out_dir`` (replacing what is there) and return ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(
        parents=True, exist_ok=True
    )  # first: a fresh data directory, or one unusable, is known
    started = time.monotonic()  # before a minute of training, not after
    report = _Reporter(progress)
    _log.info("building the demo model in %s", out_dir)
    report("tokenizer", 0)
    with _seeded(config.seed), _one_thread():
        tokenizer = train_tokenizer(config)
        pieces = faq_pieces(tokenizer, FAQ)
        model = make_model(tokenizer, config)
        steps = train_until_exact(model, pieces, config, lambda share: report("training", 5 + 85 * share))
    staging = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=out_dir.parent))
    try:
        report("checking", 90)
        save_model(model, tokenizer, staging)
        with _one_thread():
            verify_saved(staging, config)
        report("checking", 100)
        _write_stamp(staging, _fingerprint(config))
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log.info("demo model built in %.1f s (%d training steps)", time.monotonic() - started, steps)
    return out_dir


# ---------------------------------------------------------------- tokenizer


def tokenizer_corpus() -> list[str]:
    """Korean and English text from the repository: the corpus file, the FAQ and the system prompt."""
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    lines += [text for pair in FAQ for text in pair]
    lines.append(SYSTEM_PROMPT)
    return [line for line in lines if line.strip()]


def train_tokenizer(config: DemoConfig) -> PreTrainedTokenizerFast:
    """A byte-level BPE like Llama-3's (same split pattern), special tokens appended after the vocabulary."""
    core = Tokenizer(models.BPE(ignore_merges=True))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = core.token_to_id(BEGIN_OF_TEXT)
    core.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BEGIN_OF_TEXT}:0 $A:0",
                pair=f"{BEGIN_OF_TEXT}:0 $A:0 {BEGIN_OF_TEXT}:1 $B:1",
                special_tokens=[(BEGIN_OF_TEXT, bos_id)],
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BEGIN_OF_TEXT,
        eos_token=EOT,
        model_max_length=config.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------- training data


@dataclass(frozen=True)
class Example:
    """One training conversation: a shared ``prefix`` (the system prompt) and the exchanges after it."""

    prefix: tuple[int, ...]
    ids: list[int]  # the exchanges after the prefix
    labels: list[int]  # -100 outside the answers


@dataclass(frozen=True)
class FaqPieces:
    """The FAQ as token pieces that add up to the chat template's rendering of any conversation of FAQ turns."""

    system: tuple[int, ...]  # begin-of-text and the system prompt
    questions: list[list[int]]  # each question's user turn and the assistant header after it
    answers: list[list[int]]  # each answer and its end-of-turn token

    def conversation(self, order: Sequence[int]) -> Example:
        """The FAQ pairs ``order`` as one conversation; every answer is trained."""
        ids: list[int] = []
        labels: list[int] = []
        for index in order:
            ids += self.questions[index] + self.answers[index]
            labels += [-100] * len(self.questions[index]) + self.answers[index]
        return Example(prefix=self.system, ids=ids, labels=labels)


def faq_pieces(tokenizer: PreTrainedTokenizerBase, faq: Sequence[tuple[str, str]]) -> FaqPieces:
    system_messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    system = chat_ids(tokenizer, system_messages, generation_prompt=False)
    questions, answers = [], []
    for question, answer in faq:
        messages = [*system_messages, {"role": "user", "content": question}]
        prompt = chat_ids(tokenizer, messages, generation_prompt=True)
        full = chat_ids(
            tokenizer, [*messages, {"role": "assistant", "content": answer}], generation_prompt=False
        )
        if full[: len(prompt)] != prompt or prompt[: len(system)] != system:
            raise RuntimeError(
                "the chat template does not tokenize as a prefix; cannot place the answer labels"
            )
        questions.append(prompt[len(system) :])
        answers.append(full[len(prompt) :])
    pieces = FaqPieces(tuple(system), questions, answers)
    _check_pieces(tokenizer, pieces, faq)
    return pieces


def _check_pieces(
    tokenizer: PreTrainedTokenizerBase, pieces: FaqPieces, faq: Sequence[tuple[str, str]]
) -> None:
    """Pieces joined must equal the template's own rendering of a conversation (checked on the first three)."""
    order = list(range(min(3, len(faq))))
    example = pieces.conversation(order)
    rendered = chat_ids(tokenizer, _messages([faq[i] for i in order]), generation_prompt=False)
    if list(example.prefix) + example.ids != rendered:
        raise RuntimeError("FAQ turns do not tokenize independently; cannot build multi-turn samples")


def training_batch(pieces: FaqPieces, rng: random.Random, config: DemoConfig) -> list[Example]:
    """Every FAQ pair alone, and ``conversations_per_step`` conversations of FAQ turns in a fresh random order."""
    count = len(pieces.questions)
    batch = [pieces.conversation([i]) for i in range(count)]
    for _ in range(config.conversations_per_step):
        turns = rng.randint(2, min(config.max_turns, count))
        batch.append(pieces.conversation(rng.sample(range(count), turns)))
    return batch


def chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, generation_prompt: bool
) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)  # type: ignore[arg-type]


def _messages(exchanges: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for question, answer in exchanges:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


# ---------------------------------------------------------------- model and training


def make_model(tokenizer: PreTrainedTokenizerBase, config: DemoConfig) -> LlamaForCausalLM:
    eot, end, bos = (_token_id(tokenizer, token) for token in (EOT, END_OF_TEXT, BEGIN_OF_TEXT))
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eot,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(llama)
    model.generation_config = GenerationConfig(
        bos_token_id=bos,
        eos_token_id=[eot, end],
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    )
    return model


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


@dataclass
class _Group:
    """Examples that share a prefix: the prefix runs once (batch 1), its KV cache is repeated for the rows."""

    prefix: torch.Tensor  # (1, P)
    ids: torch.Tensor  # (rows, R)
    labels: torch.Tensor  # (rows, R)
    mask: torch.Tensor  # (rows, P + R)
    positions: torch.Tensor  # (rows, R)


def train_until_exact(
    model: LlamaForCausalLM,
    pieces: FaqPieces,
    config: DemoConfig,
    progress: Callable[[float], None] | None = None,
) -> int:
    """AdamW on fresh batches (``training_batch``) until every answer token is sampled for sure at the demo's
    sampling settings, on ``exact_steps`` fresh draws in a row (so it holds for orders never trained on).

    "For sure": its probability at temperature 0.6 is at least ``min_token_prob`` (so top_p 0.9 keeps only it) and
    its logit beats the runner-up by ``logit_margin`` (so greedy decoding is robust to batching noise).
    ``progress`` gets the best share of answer tokens learned so far. Returns the steps taken.
    """
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    model.train()
    exact_in_a_row = 0
    best = 0.0
    try:
        for step in range(1, config.max_steps + 1):
            groups = _group(training_batch(pieces, rng, config))
            loss, margin, prob, share = _train_step(model, optimizer, groups, config)
            if step % config.check_every == 0:
                _log.debug("demo step %d: loss %.4f, margin %.2f, min prob %.3f", step, loss, margin, prob)
            exact = margin >= config.logit_margin and prob >= config.min_token_prob
            exact_in_a_row = exact_in_a_row + 1 if exact else 0
            best = max(best, share * 0.95 + 0.05 * exact_in_a_row / config.exact_steps)
            if progress is not None:
                progress(min(best, 1.0))
            if exact_in_a_row >= config.exact_steps:
                return step
    finally:
        model.eval()
    raise RuntimeError(
        f"the demo model did not learn the FAQ exactly in {config.max_steps} steps; raise DemoConfig.max_steps"
    )


def _group(examples: Sequence[Example]) -> list[_Group]:
    by_prefix: dict[tuple[int, ...], list[Example]] = {}
    for example in examples:
        by_prefix.setdefault(example.prefix, []).append(example)
    groups = []
    for prefix, members in by_prefix.items():
        width = max(len(e.ids) for e in members)
        ids = torch.zeros((len(members), width), dtype=torch.long)
        labels = torch.full((len(members), width), -100, dtype=torch.long)
        mask = torch.zeros((len(members), len(prefix) + width), dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for row, example in enumerate(members):
            n = len(example.ids)
            ids[row, :n] = torch.tensor(example.ids)
            labels[row, :n] = torch.tensor(example.labels)
            mask[row, len(prefix) : len(prefix) + n] = 1
        positions = (len(prefix) + torch.arange(width)).expand(len(members), -1)
        groups.append(_Group(torch.tensor([prefix]), ids, labels, mask, positions))
    return groups


def _train_step(
    model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, groups: Sequence[_Group], config: DemoConfig
) -> tuple[float, float, float, float]:
    """One step over all groups; logits only where a label is (the lm_head would dominate otherwise)."""
    all_logits, all_gold = [], []
    for group in groups:
        prefix_out = call_model(model.model, input_ids=group.prefix, use_cache=True)
        cache = output_cache(prefix_out)
        cache.batch_repeat_interleave(group.ids.shape[0])
        out = call_model(
            model.model,
            input_ids=group.ids,
            attention_mask=group.mask,
            position_ids=group.positions,
            cache=cache,
        )
        targets = group.labels[:, 1:]
        where = targets != -100
        all_logits.append(model.lm_head(out.last_hidden_state[:, :-1][where]))
        all_gold.append(targets[where])
    logits, gold = torch.cat(all_logits), torch.cat(all_gold)
    loss = torch.nn.functional.cross_entropy(logits, gold)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    with torch.no_grad():
        gold_logit = logits.gather(1, gold[:, None]).squeeze(1)
        rivals = logits.scatter(1, gold[:, None], float("-inf"))
        margins = gold_logit - rivals.max(dim=1).values
        probs = torch.softmax(logits / 0.6, dim=-1).gather(1, gold[:, None]).squeeze(1)
        learned = ((margins >= config.logit_margin) & (probs >= config.min_token_prob)).float().mean().item()
    return loss.item(), margins.min().item(), probs.min().item(), learned


# ---------------------------------------------------------------- save and verify


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


VERIFY_CONVERSATION_TURNS = 8


def verify_saved(folder: Path, config: DemoConfig = DEMO_CONFIG) -> None:
    """Load the folder through the real loading code and check every FAQ answer with greedy decoding: each alone,
    and in a conversation of ``VERIFY_CONVERSATION_TURNS`` turns in an order never trained on."""
    from bot.settings import ModelSettings
    from inference.loading import load_model

    loaded = load_model(ModelSettings(name_or_path=str(folder), dtype="float32", device_map=None))
    wrong = [q for q, a in FAQ if greedy_reply(loaded.model, loaded.tokenizer, [q]) != a]
    order = random.Random(config.seed + 1).sample(range(len(FAQ)), VERIFY_CONVERSATION_TURNS)
    replies = greedy_replies(loaded.model, loaded.tokenizer, [FAQ[i][0] for i in order])
    wrong += [FAQ[i][0] for i, reply in zip(order, replies, strict=True) if reply != FAQ[i][1]]
    if wrong:
        raise RuntimeError(f"the demo model answers {len(wrong)} FAQ question(s) wrongly after saving")


def greedy_reply(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, user_turns: Sequence[str]
) -> str:
    """The greedy reply to the last of ``user_turns`` (earlier ones are answered greedily first)."""
    return greedy_replies(model, tokenizer, user_turns)[-1] if user_turns else ""


def greedy_replies(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, user_turns: Sequence[str]
) -> list[str]:
    """The greedy reply to each of ``user_turns`` in one conversation (each reply stays in the history)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    replies: list[str] = []
    for text in user_turns:
        messages.append({"role": "user", "content": text})
        prompt = torch.tensor([chat_ids(tokenizer, messages, generation_prompt=True)])
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=128
            )
        reply = str(tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True))
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


# ---------------------------------------------------------------- cache


def _fingerprint(config: DemoConfig) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"builder": BUILDER_VERSION, "config": asdict(config)}, sort_keys=True).encode())
    digest.update(FAQ_PATH.read_bytes())
    digest.update(CORPUS_PATH.read_bytes())
    digest.update(SYSTEM_PROMPT.encode())
    digest.update(LLAMA3_CHAT_TEMPLATE.encode())
    return digest.hexdigest()


def _stamp_matches(folder: Path, fingerprint: str) -> bool:
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(stamp.get("fingerprint") == fingerprint and (folder / "config.json").is_file())


def _write_stamp(folder: Path, fingerprint: str) -> None:
    stamp = {"fingerprint": fingerprint, "faq_pairs": len(FAQ), "built_at": time.time()}
    (folder / STAMP_NAME).write_text(json.dumps(stamp), encoding="utf-8")


def _replace_dir(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(target.name + f".old-{os.getpid()}")
        target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staging.rename(target)


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    lock_path = out_dir.with_name(out_dir.name + ".lock")
    with open(lock_path, "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no cross-process lock
            pass
        yield


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny matrices gain nothing from threads, and on a busy machine spinning threads cost ten times the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def demo_overrides(data_dir: Path) -> dict[str, Any]:
    """Settings that put the bot (or the engine server) on the demo model: CPU, float32, greedy (the FAQ answers
    come out exactly). Builds the model under ``data_dir`` on first use."""
    model_dir = ensure_demo_model(data_dir / "demo-model")
    return {
        "model": {
            "name_or_path": str(model_dir),
            "dtype": "float32",
            "device_map": None,
            "is_demo": True,
            "quantization": "none",
        },
        "generation": {"temperature": 0.0, "repetition_penalty": 1.0},
        "engine": {"kind": "local", "decoder": "hf"},
    }
