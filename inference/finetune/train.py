"""The training subprocess: ``python -m inference.finetune.train job.json``.

load the base → encode the datasets → score the base (per-example held-out loss, pair ranking, its greedy answers to
the general prompts and its loss on them; ``inference.finetune.measures``) → attach the active LoRA (if any) and
score it → start the new LoRA (from the active one, or fresh) → train with the assistant-only loss → score the new
LoRA → save the LoRA → write result.json. Progress goes to stdout as JSON lines (``bot.learning.job`` describes
them); logs go to stderr. The bot reads the result and decides about promotion; nothing here touches the database
or the serving engine, so a crash or a kill leaves the LoRA in service as it was.

The process exits when its parent (the bot) goes away, so a killed bot leaves no orphan holding the GPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bot.learning.job import GeneralScores, PairScores, SplitLosses, TrainJob, TrainResult
from inference.finetune.examples import IGNORE_INDEX, Encoded, encode, read_jsonl
from inference.finetune.measures import (
    PairSet,
    build_pairs,
    example_losses,
    general_references,
    greedy_answers,
    pair_preferences,
    read_general_prompts,
    token_weighted_mean,
)
from inference.finetune.modeling import (
    Placement,
    choose_placement,
    limit_cpu_threads,
    load_base,
    load_tokenizer,
    trainable_parameters,
    with_lora,
    with_new_lora,
)

_log = logging.getLogger(__name__)

PARENT_GONE_EXIT = 3


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m inference.finetune.train job.json", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    job = TrainJob.read(Path(args[0]))
    stop_on_sigterm()
    try:
        result = run(job)
    except SystemExit:
        finish_gpu_work()
        raise
    result.write(Path(job.result_file))
    emit("done", result=job.result_file)
    return 0


def stop_on_sigterm() -> None:
    """SIGTERM (the bot stopping a run: cancel, timeout, shutdown) leaves through SystemExit, so the process ends
    normally instead of dying with kernels in flight (see ``finish_gpu_work``)."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def finish_gpu_work() -> None:
    """Wait for the kernels already queued before exiting: a client that leaves with work in flight can upset an
    MPS server that the serving engine shares (docs/learning.md, "Sharing one GPU: MPS")."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def run(job: TrainJob) -> TrainResult:
    started = time.monotonic()
    seed_everything(job.seed)
    parent = os.getppid()
    placement = choose_placement(job)
    emit("phase", phase="loading", device=placement.device, quantized=placement.quantized)
    tokenizer = load_tokenizer(job.base_model)
    train_set = encode_file(tokenizer, job.train_file, job.max_seq_len)
    eval_conversations, eval_set = encode_conversations(tokenizer, job.eval_file, job.max_seq_len)
    regression_set = (
        encode_file(tokenizer, job.regression_file, job.max_seq_len) if job.regression_file else []
    )
    if not train_set or not eval_set:
        raise SystemExit("nothing to train on or nothing to evaluate with after encoding")
    pad_id = int(tokenizer.pad_token_id)
    base = load_base(job.base_model, placement)
    limit_cpu_threads(base, placement)
    pairs = build_pairs(tokenizer, eval_conversations, job.max_seq_len, job.seed)
    prompts = read_general_prompts(job.general_prompts_file) if job.general_prompts_file else []
    replay_prompts = read_general_prompts(job.replay_prompts_file) if job.replay_prompts_file else []

    emit("phase", phase="evaluating")
    held_out = Scores()
    regression = Scores()
    ranking = Scores()
    general = Scores()
    general_set, base_answers = general_references(
        base, tokenizer, prompts, job.system_prompt, job.max_seq_len
    )
    replay_set, _ = general_references(base, tokenizer, replay_prompts, job.system_prompt, job.max_seq_len)
    score(base, "base", job, pad_id, eval_set, held_out, regression_set, regression, pairs, ranking)
    score_general(base, "base", job, pad_id, general_set, general)
    started_from = "base"
    if job.init_lora:
        model = with_lora(base, job.init_lora, trainable=job.continue_from_init)
        score(model, "current", job, pad_id, eval_set, held_out, regression_set, regression, pairs, ranking)
        score_general(model, "current", job, pad_id, general_set, general)
        if job.continue_from_init:
            started_from = "current"
        else:
            model = with_new_lora(model.unload(), job)
    else:
        model = with_new_lora(base, job)

    emit("phase", phase="training")
    curve = eval_set[: job.curve_examples] if job.curve_points > 0 else []
    steps = train(model, [*train_set, *replay_set], job, pad_id, placement, parent, curve=curve)

    emit("phase", phase="evaluating")
    score(model, "new", job, pad_id, eval_set, held_out, regression_set, regression, pairs, ranking)
    score_general(model, "new", job, pad_id, general_set, general)
    new_answers = greedy_answers(model, tokenizer, prompts, job.system_prompt)

    emit("phase", phase="saving")
    model.save_pretrained(job.output_dir, save_embedding_layers=False)  # LoRA weights only, not the head
    tokenizer.save_pretrained(job.output_dir)
    return TrainResult(
        train_examples=len(train_set),
        eval_examples=len(eval_set),
        steps=steps,
        eval=held_out.split_losses(eval_set),
        regression=regression.split_losses(regression_set) if regression_set else None,
        lora_dir=job.output_dir,
        duration_s=time.monotonic() - started,
        device=placement.device,
        quantized=placement.quantized,
        pairs=PairScores(pairs.pairs, **ranking.lists()) if pairs.pairs else None,
        general=GeneralScores(
            len(general_set),
            **general.lists(),
            base_distinct=len(set(base_answers)),
            new_distinct=len(set(new_answers)),
        )
        if general_set
        else None,
        started_from="current" if started_from == "current" else "base",
    )


class Scores:
    """Per-example scores of the base, the active LoRA and the new LoRA on one set."""

    def __init__(self) -> None:
        self.each: dict[str, list[float]] = {}

    def lists(self) -> dict[str, Any]:
        return {
            "base": self.each.get("base", []),
            "current": self.each.get("current"),
            "new": self.each.get("new", []),
        }

    def split_losses(self, examples: Sequence[Encoded]) -> SplitLosses:
        means = {which: token_weighted_mean(each, examples) for which, each in self.each.items()}
        return SplitLosses(
            base=means.get("base"),
            current=means.get("current"),
            new=means.get("new"),
            base_each=self.each.get("base"),
            current_each=self.each.get("current"),
            new_each=self.each.get("new"),
        )


def score(
    model: torch.nn.Module,
    which: str,
    job: TrainJob,
    pad_id: int,
    eval_set: Sequence[Encoded],
    held_out: Scores,
    regression_set: Sequence[Encoded],
    regression: Scores,
    pairs: PairSet,
    ranking: Scores,
) -> None:
    """Held-out losses (the new split and the active version's), and the pair ranking, of one model."""
    batch = job.micro_batch_size
    held_out.each[which] = example_losses(model, eval_set, pad_id, batch)
    emit("eval", which=which, split="eval", loss=token_weighted_mean(held_out.each[which], eval_set))
    if regression_set:
        regression.each[which] = example_losses(model, regression_set, pad_id, batch)
        loss = token_weighted_mean(regression.each[which], regression_set)
        emit("eval", which=which, split="regression", loss=loss)
    if pairs.pairs:
        ranking.each[which] = pair_preferences(model, pairs, pad_id, batch)
        share = sum(ranking.each[which]) / len(ranking.each[which])
        emit("eval", which=which, split="pairs", loss=share)


def score_general(
    model: torch.nn.Module,
    which: str,
    job: TrainJob,
    pad_id: int,
    general_set: Sequence[Encoded],
    general: Scores,
) -> None:
    if general_set:
        general.each[which] = example_losses(model, general_set, pad_id, job.micro_batch_size)
        emit("eval", which=which, split="general", loss=sum(general.each[which]) / len(general_set))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def encode_file(tokenizer: Any, path: str, max_len: int) -> list[Encoded]:
    return encode_conversations(tokenizer, path, max_len)[1]


def encode_conversations(
    tokenizer: Any, path: str, max_len: int
) -> tuple[list[list[dict[str, Any]]], list[Encoded]]:
    """The conversations of a file that encode to something trainable, and their encodings (same order)."""
    kept: list[list[dict[str, Any]]] = []
    encoded: list[Encoded] = []
    for messages in read_jsonl(path):
        one = encode(tokenizer, messages, max_len)
        if one is not None:
            kept.append(messages)
            encoded.append(one)
    return kept, encoded


# batches


def collate(examples: Sequence[Encoded], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def predicted_tokens(examples: Sequence[Encoded]) -> int:
    """Label tokens that count in the loss (the first token of a sequence is never predicted)."""
    return sum(sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in examples)


def chunks(items: Sequence[Encoded], size: int) -> Iterator[Sequence[Encoded]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# evaluation


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: Sequence[Encoded], job: TrainJob, pad_id: int) -> float:
    """Mean loss per trained token over the whole set (not a mean of per-batch means)."""
    device = str(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    total = 0.0
    count = 0
    for part in chunks(examples, job.micro_batch_size):
        n = predicted_tokens(part)
        if n == 0:
            continue
        loss = model(**collate(part, pad_id, device)).loss
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


# training


def total_steps(job: TrainJob, examples: int) -> int:
    if job.max_steps:
        return job.max_steps
    return max(1, math.ceil(math.ceil(examples / job.batch_size) * job.epochs))


def learning_rate_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then linear decay to a tenth of the peak."""
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (1.0 - 0.9 * progress)


def batches(examples: Sequence[Encoded], batch_size: int, seed: int) -> Iterator[list[Encoded]]:
    """Endless shuffled batches, a new order each epoch."""
    order = list(range(len(examples)))
    rng = random.Random(seed)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]


def train(
    model: torch.nn.Module,
    examples: Sequence[Encoded],
    job: TrainJob,
    pad_id: int,
    placement: Placement,
    parent: int,
    *,
    curve: Sequence[Encoded] = (),
) -> int:
    """Train for the job's steps; ``curve``: held-out examples scored at ``curve_points`` evaluations."""
    total = total_steps(job, len(examples))
    evaluate_at = curve_steps(total, job.curve_points) if curve else set()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=job.learning_rate, weight_decay=0.0)
    model.train()
    started = time.monotonic()
    stream = batches(examples, job.batch_size, job.seed)
    if 0 in evaluate_at:
        emit("heldout", step=0, loss=round(heldout_loss(model, curve, job, pad_id), 5))
    for step in range(total):
        exit_if_orphaned(parent)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, total, job.learning_rate)
        loss = accumulate_gradients(model, next(stream), job, pad_id, placement.device)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.monotonic() - started
        eta = elapsed / (step + 1) * (total - step - 1)
        emit("progress", step=step + 1, total=total, loss=round(loss, 5), eta_s=round(eta, 1))
        if step + 1 in evaluate_at:
            emit("heldout", step=step + 1, loss=round(heldout_loss(model, curve, job, pad_id), 5))
    return total


def curve_steps(total: int, points: int) -> set[int]:
    """The steps after which the held-out loss is measured: 0 (the starting point), every ``total / points`` steps,
    and the last."""
    if points <= 0:
        return set()
    every = max(1, math.ceil(total / points))
    return {0, total, *range(every, total, every)}


def accumulate_gradients(
    model: torch.nn.Module, batch: Sequence[Encoded], job: TrainJob, pad_id: int, device: str
) -> float:
    """Backward over micro-batches, each weighted by its share of the batch's trained tokens."""
    tokens = predicted_tokens(batch)
    if tokens == 0:
        return 0.0
    total = 0.0
    for part in chunks(batch, job.micro_batch_size):
        n = predicted_tokens(part)
        if n == 0:
            continue
        loss = model(**collate(part, pad_id, device)).loss
        (loss * (n / tokens)).backward()
        total += float(loss.detach()) * n / tokens
    return total


def exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:
        _log.warning("the bot process is gone: stopping the fine-tune")
        sys.exit(PARENT_GONE_EXIT)


if __name__ == "__main__":
    sys.exit(main())
