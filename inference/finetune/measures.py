"""What the quality gate needs from the trainer, measured in its one process on one device so the numbers compare.

- Per-example held-out loss (mean per answer token of each example), so the gate can run paired tests: the same
  examples under two models, the noise measured from how much the per-example differences vary.
- Pair ranking: for each held-out question, its own answer against other examples' answers (answers with the same
  text are never paired). A model that learned which answer goes with which question prefers the true one; data whose
  answers were shuffled between questions teaches no such preference, however much it lowers the loss.
- General prompts: a fixed bilingual set shipped with the project. The base answers each greedily once; every model
  is then scored on those answers (a LoRA that damages what the base did well raises that loss), and the new LoRA
  answers them greedily too: how many different answers it gives shows whether it collapsed onto one reply.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference.finetune.examples import IGNORE_INDEX, Encoded, encode

PAIRS_PER_EXAMPLE = 4  # foreign answers per held-out question
MAX_PAIR_EXAMPLES = 128  # held-out questions ranked at most (the first ones in file order)
GENERAL_MAX_NEW_TOKENS = 48  # the base's reference answer to a general prompt is at most this long


@dataclass(frozen=True)
class PairSet:
    """Held-out questions with their true answer and foreign answers, encoded; ``owner[k]``: the question of row k."""

    true: list[Encoded]
    foreign: list[Encoded]
    owner: list[int]  # for each foreign row, the index into ``true``

    @property
    def pairs(self) -> int:
        return len(self.foreign)


def read_general_prompts(path: str | Path) -> list[str]:
    """The shipped general prompts: a JSON list of ``{"lang": "ko" | "en", "prompt": "..."}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [str(item["prompt"]) for item in data]


# per-example losses


@torch.no_grad()
def example_losses(
    model: torch.nn.Module, examples: Sequence[Encoded], pad_id: int, batch: int
) -> list[float]:
    """Each example's mean loss per trained token (examples without a predicted token get 0.0)."""
    device = str(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    for start in range(0, len(examples), max(1, batch)):
        part = examples[start : start + max(1, batch)]
        losses.extend(_batch_losses(model, part, pad_id, device))
    model.train(was_training)
    return losses


def _batch_losses(model: torch.nn.Module, part: Sequence[Encoded], pad_id: int, device: str) -> list[float]:
    width = max(len(e.input_ids) for e in part)
    ids = torch.full((len(part), width), pad_id, dtype=torch.long)
    labels = torch.full((len(part), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(part), width), dtype=torch.long)
    for row, example in enumerate(part):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    targets = labels[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    counted = (targets != IGNORE_INDEX).sum(dim=1)
    sums = nll.sum(dim=1)
    return [float(s) / int(c) if int(c) else 0.0 for s, c in zip(sums, counted, strict=True)]


def token_weighted_mean(losses: Sequence[float], examples: Sequence[Encoded]) -> float:
    """The split's loss as one number: the mean over every trained token (not a mean of example means)."""
    weights = [max(0, sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)) for e in examples]
    total = sum(weights)
    return sum(loss * w for loss, w in zip(losses, weights, strict=True)) / total if total else 0.0


# pair ranking


def build_pairs(
    tokenizer: Any, conversations: Sequence[list[dict[str, Any]]], max_len: int, seed: int
) -> PairSet:
    """Each held-out question with its own answer and up to PAIRS_PER_EXAMPLE answers of other examples."""
    answers = [_last_answer(messages) for messages in conversations]
    rng = random.Random(seed)
    true: list[Encoded] = []
    foreign: list[Encoded] = []
    owner: list[int] = []
    for index, messages in enumerate(conversations[:MAX_PAIR_EXAMPLES]):
        own = answers[index]
        others = sorted({a for a in answers if a is not None and a != own})
        if own is None or not others:
            continue
        own_encoded = encode(tokenizer, messages, max_len)
        if own_encoded is None:
            continue
        chosen = rng.sample(others, min(PAIRS_PER_EXAMPLE, len(others)))
        encoded = [encode(tokenizer, _with_answer(messages, answer), max_len) for answer in chosen]
        kept = [e for e in encoded if e is not None]
        if not kept:
            continue
        true.append(own_encoded)
        foreign.extend(kept)
        owner.extend([len(true) - 1] * len(kept))
    return PairSet(true, foreign, owner)


def _last_answer(messages: Sequence[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            return str(message["content"]).strip()
    return None


def _with_answer(messages: Sequence[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    replaced = [dict(m) for m in messages]
    for message in reversed(replaced):
        if message["role"] == "assistant" and message.get("weight", 1) != 0:
            message["content"] = answer
            break
    return replaced


def pair_preferences(model: torch.nn.Module, pairs: PairSet, pad_id: int, batch: int) -> list[float]:
    """Per question: the share of its pairs where the true answer's loss per token is lower (a tie counts a half)."""
    own = example_losses(model, pairs.true, pad_id, batch)
    other = example_losses(model, pairs.foreign, pad_id, batch)
    wins = [0.0] * len(own)
    counts = [0] * len(own)
    for k, question in enumerate(pairs.owner):
        difference = other[k] - own[question]
        wins[question] += 1.0 if difference > 0 else 0.5 if difference == 0 else 0.0
        counts[question] += 1
    return [w / c for w, c in zip(wins, counts, strict=True) if c]


# general prompts


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], system_prompt: str
) -> list[str]:
    """The model's greedy answer to each prompt (at most GENERAL_MAX_NEW_TOKENS tokens)."""
    device = str(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for prompt in prompts:
        messages = _prompt_messages(system_prompt, prompt)
        ids = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        prompt_ids = torch.tensor([list(ids)], device=device)
        out = model.generate(  # type: ignore[operator]
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            do_sample=False,
            max_new_tokens=GENERAL_MAX_NEW_TOKENS,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers.append(str(tokenizer.decode(out[0, prompt_ids.shape[1] :], skip_special_tokens=True)).strip())
    model.train(was_training)
    return answers


def general_references(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], system_prompt: str, max_len: int
) -> tuple[list[Encoded], list[str]]:
    """The base's greedy answer to each general prompt, encoded as a training example (loss on the answer), and the
    answers themselves."""
    answers = greedy_answers(model, tokenizer, prompts, system_prompt)
    references: list[Encoded] = []
    for prompt, answer in zip(prompts, answers, strict=True):
        if not answer:
            continue
        messages = _prompt_messages(system_prompt, prompt)
        encoded = encode(tokenizer, [*messages, {"role": "assistant", "content": answer}], max_len)
        if encoded is not None:
            references.append(encoded)
    return references, answers


def _prompt_messages(system_prompt: str, prompt: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": prompt}]
