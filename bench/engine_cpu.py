"""CPU benchmark of the LocalEngine: N conversations over M channels arriving at once.

Runs the same burst twice on the same model: batched (up to ``--batch`` requests share each decode step) and one
request at a time (``max_batch_size=1``, the prototype's way), and reports for each: completed, refused, per-channel
order violations, wait to the first token (p50/p95/max) and aggregate tokens/s; then the ratio. Every reply is
forced to ``--tokens`` tokens (terminators are replaced by an ordinary token), so both runs decode the same work.

Model: ``demo`` (the FAQ demo model; built if missing) or ``random`` (a randomly initialised Llama of the same
tokenizer, ~``--hidden`` wide, for a model where the matrix work is not negligible).

    .venv/bin/python -m bench.engine_cpu                      # 24 conversations over 8 channels, demo model
    .venv/bin/python -m bench.engine_cpu --model random --hidden 512 --layers 8
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from bot.domain import ChatTurn, GenerationParams, GenerationRequest, QueuePosition, Role
from bot.errors import QueueFull
from bot.settings import DEFAULT_SYSTEM_PROMPT, EngineSettings, GenerationSettings, ModelSettings
from inference.decoder import BatchDecoder, SlotRequest
from inference.decoders import make_decoder
from inference.demo_model import FAQ, ensure_demo_model
from inference.loading import load_model
from inference.local_engine import LocalEngine

_log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "engine-cpu.json"


@dataclass
class Outcome:
    request_id: str
    channel: str
    index_in_channel: int
    refused: bool = False
    first_token_s: float | None = None
    end_s: float | None = None
    tokens: int = 0


@dataclass
class RunSummary:
    max_batch_size: int
    conversations: int
    channels: int
    completed: int
    refused: int
    order_violations: int
    wait_first_token_p50_s: float
    wait_first_token_p95_s: float
    wait_first_token_max_s: float
    total_tokens: int
    wall_s: float
    aggregate_tokens_per_s: float
    max_concurrent_rows: int
    extra: dict[str, Any] = field(default_factory=dict)


class ForcedLength:
    """A BatchDecoder wrapper that replaces terminators by an ordinary token: every reply runs to max_new_tokens."""

    def __init__(self, inner: BatchDecoder, stop_ids: frozenset[int], filler: int) -> None:
        self._inner, self._stop_ids, self._filler = inner, stop_ids, filler

    @property
    def capacity(self) -> int:
        return self._inner.capacity

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        return self._inner.can_admit(prompt_len, max_new_tokens)

    def admit(self, request: SlotRequest) -> int:
        return self._swap(self._inner.admit(request))

    def step(self) -> dict[int, int]:
        return {slot: self._swap(token) for slot, token in self._inner.step().items()}

    def release(self, slot: int) -> None:
        self._inner.release(slot)

    def _swap(self, token: int) -> int:
        return self._filler if token in self._stop_ids else token

    def __getattr__(self, name: str) -> object:  # the inner decoder's extras (can_admit_together, close...)
        return getattr(self._inner, name)


def load_bench_model(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    demo_dir = ensure_demo_model(REPO / ".cache" / "demo-model")
    loaded = load_model(ModelSettings(name_or_path=str(demo_dir), dtype="float32", device_map=None))
    if args.model == "demo":
        config = loaded.model.config
        return loaded.model, loaded.tokenizer, describe(config, "demo FAQ model")
    config = LlamaConfig(
        vocab_size=len(loaded.tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 2),
        num_key_value_heads=max(args.hidden // 256, 1),
        max_position_embeddings=2048,
        bos_token_id=loaded.model.config.bos_token_id,
        eos_token_id=loaded.model.config.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = loaded.model.generation_config
    return model, loaded.tokenizer, describe(config, "random-weight Llama")


def describe(config: Any, kind: str) -> str:
    return (
        f"{kind}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads "
        f"/ {config.num_key_value_heads} KV heads, vocab {config.vocab_size}"
    )


def build_requests(conversations: int, channels: int, tokens: int) -> list[GenerationRequest]:
    """Conversation i goes to channel i % channels, so each channel gets its messages in index order."""
    params = GenerationParams(max_new_tokens=tokens)  # the prototype's sampling settings
    requests = []
    for i in range(conversations):
        question = FAQ[i % len(FAQ)][0]
        turns = (ChatTurn(Role.SYSTEM, DEFAULT_SYSTEM_PROMPT), ChatTurn(Role.USER, question))
        requests.append(GenerationRequest(f"bench-{i}", f"channel-{i % channels}", turns, params))
    return requests


async def run_burst(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[GenerationRequest],
    batch: int,
    queue_limit: int,
) -> RunSummary:
    stop_ids = frozenset(_as_list(model.generation_config.eos_token_id))
    filler = int(tokenizer.convert_tokens_to_ids("a"))  # type: ignore[arg-type]

    def factory(m: PreTrainedModel, settings: EngineSettings) -> BatchDecoder:
        return ForcedLength(make_decoder(m, settings), stop_ids, filler)

    engine = LocalEngine(
        model,
        tokenizer,
        engine=EngineSettings(decoder="hf", max_batch_size=batch, queue_limit=queue_limit),
        generation=GenerationSettings(timeout_s=3600),
        decoder_factory=factory,
    )
    try:
        await warm_up(engine, requests[0])
        started = time.monotonic()
        counters: dict[str, int] = {}
        outcomes = await asyncio.gather(*(consume(engine, r, started, counters) for r in requests))
        wall = max((o.end_s or 0.0) for o in outcomes)
        for outcome in outcomes:
            outcome.tokens = engine.stats.tokens_by_request.get(outcome.request_id, 0)
        return summarise(outcomes, batch, len({r.channel for r in requests}), wall, engine.stats.max_active)
    finally:
        await engine.aclose()


async def warm_up(engine: LocalEngine, request: GenerationRequest) -> None:
    short = GenerationRequest("warm-up", "warm-up", request.turns, GenerationParams(max_new_tokens=4))
    async for _event in engine.generate(short):
        pass


async def consume(
    engine: LocalEngine, request: GenerationRequest, started: float, counters: dict[str, int]
) -> Outcome:
    index = counters.get(request.channel, 0)
    counters[request.channel] = index + 1
    outcome = Outcome(request.request_id, request.channel, index)
    try:
        async for event in engine.generate(request):
            if isinstance(event, QueuePosition):
                continue
            if outcome.first_token_s is None:
                outcome.first_token_s = time.monotonic() - started
    except QueueFull:
        outcome.refused = True
    outcome.end_s = time.monotonic() - started
    return outcome


def summarise(outcomes: list[Outcome], batch: int, channels: int, wall: float, max_active: int) -> RunSummary:
    done = [o for o in outcomes if not o.refused and o.first_token_s is not None]
    waits = sorted(o.first_token_s or 0.0 for o in done)
    tokens = sum(o.tokens for o in done)
    return RunSummary(
        max_batch_size=batch,
        conversations=len(outcomes),
        channels=channels,
        completed=len(done),
        refused=sum(o.refused for o in outcomes),
        order_violations=order_violations(done),
        wait_first_token_p50_s=round(percentile(waits, 50), 3),
        wait_first_token_p95_s=round(percentile(waits, 95), 3),
        wait_first_token_max_s=round(waits[-1] if waits else 0.0, 3),
        total_tokens=tokens,
        wall_s=round(wall, 3),
        aggregate_tokens_per_s=round(tokens / wall, 1) if wall else 0.0,
        max_concurrent_rows=max_active,
    )


def order_violations(done: list[Outcome]) -> int:
    """Pairs in one channel where a later message started before an earlier one had finished."""
    violations = 0
    by_channel: dict[str, list[Outcome]] = {}
    for outcome in done:
        by_channel.setdefault(outcome.channel, []).append(outcome)
    for items in by_channel.values():
        items.sort(key=lambda o: o.index_in_channel)
        for earlier, later in itertools.pairwise(items):
            if (later.first_token_s or 0.0) < (earlier.end_s or 0.0):
                violations += 1
    return violations


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def _as_list(value: Any) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def print_table(runs: list[RunSummary]) -> None:
    columns = [
        ("batch", "max_batch_size"),
        ("done", "completed"),
        ("refused", "refused"),
        ("order viol.", "order_violations"),
        ("TTFT p50 s", "wait_first_token_p50_s"),
        ("TTFT p95 s", "wait_first_token_p95_s"),
        ("TTFT max s", "wait_first_token_max_s"),
        ("tokens", "total_tokens"),
        ("wall s", "wall_s"),
        ("tok/s", "aggregate_tokens_per_s"),
    ]
    print(" | ".join(f"{title:>11}" for title, _key in columns))
    for run in runs:
        row = asdict(run)
        print(" | ".join(f"{row[key]!s:>11}" for _title, key in columns))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per reply (forced)")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the batched run")
    parser.add_argument("--queue-limit", type=int, default=64)
    parser.add_argument("--model", choices=["demo", "random"], default="demo")
    parser.add_argument("--hidden", type=int, default=512, help="--model random: hidden size")
    parser.add_argument("--layers", type=int, default=8, help="--model random: layers")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    model, tokenizer, model_text = load_bench_model(args)
    requests = build_requests(args.conversations, args.channels, args.tokens)
    batched = asyncio.run(run_burst(model, tokenizer, requests, args.batch, args.queue_limit))
    single = asyncio.run(run_burst(model, tokenizer, requests, 1, args.queue_limit))
    ratio = round(batched.aggregate_tokens_per_s / single.aggregate_tokens_per_s, 2)

    print(
        f"{args.conversations} conversations over {args.channels} channels, {args.tokens} tokens each; {model_text}"
    )
    print_table([batched, single])
    print(f"batched / one-at-a-time aggregate tokens/s: {ratio}x")
    result = {
        "command": " ".join(["python -m bench.engine_cpu", *_argv_without_defaults(args, parser)]),
        "model": model_text,
        "conversations": args.conversations,
        "channels": args.channels,
        "tokens_per_reply": args.tokens,
        "sampling": "temperature 0.6, top_p 0.9, repetition_penalty 1.1 (terminators replaced: fixed length)",
        **{k: v for k, v in asdict(batched).items() if k not in ("conversations", "channels", "extra")},
        "baseline_one_at_a_time": {k: v for k, v in asdict(single).items() if k != "extra"},
        "batched_over_one_at_a_time_tokens_per_s": ratio,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads_main": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def _argv_without_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    parts = []
    for action in parser._actions:
        if action.dest in ("help",) or not action.option_strings:
            continue
        value = getattr(args, action.dest)
        if value != action.default:
            parts.append(f"{action.option_strings[0]} {value}")
    return parts


if __name__ == "__main__":
    main()
