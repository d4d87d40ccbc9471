"""The training subprocess: ``python -m inference.finetune.train job.json``.

load the base → encode the datasets → held-out loss of the base → attach the active LoRA (if any) and measure it →
start the new LoRA (from the active one, or fresh) → train with the assistant-only loss → held-out loss of the new
LoRA → save the adapter → write result.json. Progress goes to stdout as JSON lines (``bot.learning.job`` describes
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
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bot.learning.job import SplitLosses, TrainJob, TrainResult
from inference.finetune.examples import IGNORE_INDEX, Encoded, encode, read_jsonl
from inference.finetune.modeling import (
    Placement,
    choose_placement,
    limit_cpu_threads,
    load_base,
    load_tokenizer,
    trainable_parameters,
    with_adapter,
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
    result = run(job)
    result.write(Path(job.result_file))
    emit("done", result=job.result_file)
    return 0


def run(job: TrainJob) -> TrainResult:
    started = time.monotonic()
    seed_everything(job.seed)
    parent = os.getppid()
    placement = choose_placement(job)
    emit("phase", phase="loading", device=placement.device, quantized=placement.quantized)
    tokenizer = load_tokenizer(job.base_model)
    train_set = encode_file(tokenizer, job.train_file, job.max_seq_len)
    eval_set = encode_file(tokenizer, job.eval_file, job.max_seq_len)
    regression_set = (
        encode_file(tokenizer, job.regression_file, job.max_seq_len) if job.regression_file else []
    )
    if not train_set or not eval_set:
        raise SystemExit("nothing to train on or nothing to evaluate with after encoding")
    pad_id = int(tokenizer.pad_token_id)
    base = load_base(job.base_model, placement)
    limit_cpu_threads(base, placement)

    emit("phase", phase="evaluating")
    eval_losses: dict[str, float | None] = {"base": measure(base, eval_set, job, pad_id, "base", "eval")}
    regression: dict[str, float | None] = {}
    if job.init_adapter:
        model = with_adapter(base, job.init_adapter, trainable=job.continue_from_init)
        eval_losses["current"] = measure(model, eval_set, job, pad_id, "current", "eval")
        if regression_set:
            regression["current"] = measure(model, regression_set, job, pad_id, "current", "regression")
        if not job.continue_from_init:
            model = with_new_lora(model.unload(), job)
    else:
        model = with_new_lora(base, job)

    emit("phase", phase="training")
    steps = train(model, train_set, job, pad_id, placement, parent)

    emit("phase", phase="evaluating")
    eval_losses["new"] = measure(model, eval_set, job, pad_id, "new", "eval")
    if regression_set:
        regression["new"] = measure(model, regression_set, job, pad_id, "new", "regression")

    emit("phase", phase="saving")
    model.save_pretrained(job.output_dir, save_embedding_layers=False)  # LoRA weights only, not the head
    tokenizer.save_pretrained(job.output_dir)
    return TrainResult(
        train_examples=len(train_set),
        eval_examples=len(eval_set),
        steps=steps,
        eval=SplitLosses(**eval_losses),
        regression=SplitLosses(**regression) if regression else None,
        adapter_dir=job.output_dir,
        duration_s=time.monotonic() - started,
        device=placement.device,
        quantized=placement.quantized,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def encode_file(tokenizer: Any, path: str, max_len: int) -> list[Encoded]:
    encoded = [encode(tokenizer, messages, max_len) for messages in read_jsonl(path)]
    return [e for e in encoded if e is not None]


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


def measure(
    model: torch.nn.Module, examples: Sequence[Encoded], job: TrainJob, pad_id: int, which: str, split: str
) -> float:
    loss = heldout_loss(model, examples, job, pad_id)
    emit("eval", which=which, split=split, loss=loss)
    return loss


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
) -> int:
    total = total_steps(job, len(examples))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=job.learning_rate, weight_decay=0.0)
    model.train()
    started = time.monotonic()
    stream = batches(examples, job.batch_size, job.seed)
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
    return total


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
