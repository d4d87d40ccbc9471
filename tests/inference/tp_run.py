"""One rank of a tensor-parallel run on the CPU (gloo), started by test_tensor_parallel.py as a subprocess.

    python tests/inference/tp_run.py CHECKPOINT_DIR OUT_JSON [ADAPTER_DIR]   (RANK, WORLD_SIZE, MASTER_ADDR... set)

Every rank reads its slice of the checkpoint and builds a StaticSlotDecoder over it; rank 0 drives ``schedule``
through a MirroredDecoder and writes the tokens to OUT_JSON, the others follow. With ADAPTER_DIR (a PEFT LoRA),
``lora_schedule`` runs next: every rank loads its slice of the adapter, and a batch mixes it with the base.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bot.domain import GenerationParams
from inference.decoder import SlotRequest

GREEDY = GenerationParams(max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
SEEDED = GenerationParams(max_new_tokens=12, temperature=0.9, top_p=0.9, repetition_penalty=1.1, seed=1234)
UNSEEDED = GenerationParams(max_new_tokens=12, temperature=0.9, top_p=0.9, repetition_penalty=1.1)
PROMPTS = {0: [5, 17, 33, 2, 81, 9], 1: [44, 3, 3, 120, 7], 2: list(range(60, 131)), 3: [200, 11]}


def schedule(decoder) -> dict[str, list[int]]:
    """Requests that join and leave the batch: greedy, seeded and unseeded sampling, prefill in one pass and
    several; a request released mid-way. Returns {name: tokens}."""
    out: dict[str, list[int]] = {"a": [], "b": [], "c": [], "d": []}
    names = {0: "a", 1: "b", 2: "c", 3: "d"}
    out["a"].append(decoder.admit(SlotRequest(0, tuple(PROMPTS[0]), GREEDY)))
    for _ in range(3):
        for slot, tok in decoder.step().items():
            out[names[slot]].append(tok)
    firsts = decoder.admit_many(
        [SlotRequest(1, tuple(PROMPTS[1]), SEEDED), SlotRequest(2, tuple(PROMPTS[2]), GREEDY)]
    )
    for slot, tok in firsts.items():
        out[names[slot]].append(tok)
    for _ in range(5):
        for slot, tok in decoder.step().items():
            out[names[slot]].append(tok)
    decoder.release(0)  # leaves mid-way
    decoder.submit(SlotRequest(3, tuple(PROMPTS[3]), UNSEEDED))
    for _ in range(6):
        for slot, tok in decoder.step().items():
            out[names[slot]].append(tok)
    for slot in (1, 2, 3):
        decoder.release(slot)
    return out


def conversation(decoder) -> dict[str, list[int]]:
    """Two channels, three turns each, both channels' messages at once: every prompt is the previous prompt, its
    reply and a new message, so turns 2 and 3 start with KV blocks the previous turn left (prefix reuse)."""
    history = {0: list(range(100, 170)), 1: list(range(200, 270))}  # 70-token first messages
    out: dict[str, list[int]] = {}
    for turn in range(3):
        for slot in (0, 1):
            if turn:
                history[slot] += [5 + turn, 9 + slot, 11, 13, 17, 19, 23, 29, 31, 37]
            decoder.submit(SlotRequest(slot, tuple(history[slot]), GREEDY))
        got: dict[int, list[int]] = {0: [], 1: []}
        while any(len(g) < GREEDY.max_new_tokens for g in got.values()):
            for slot, tok in decoder.step().items():
                got[slot].append(tok)
        for slot in (0, 1):
            decoder.release(slot)
            history[slot] += got[slot]
            out[f"turn{turn}-slot{slot}"] = got[slot]
    return out


def lora_schedule(decoder, adapter_dir: str) -> dict[str, list[int]]:
    """Load the adapter (every rank its slice), then decode a batch mixing it with the base model, greedy."""
    decoder.load_lora("a", adapter_dir)
    jobs = {
        0: ("lora-a", "a", PROMPTS[0]),
        1: ("lora-base", None, PROMPTS[1]),
        2: ("lora-c", "a", PROMPTS[2]),
    }
    first = decoder.admit_many(
        [SlotRequest(s, tuple(p), GREEDY, lora=lora) for s, (_, lora, p) in jobs.items()]
    )
    out = {jobs[s][0]: [t] for s, t in first.items()}
    for _ in range(GREEDY.max_new_tokens - 1):
        for slot, tok in decoder.step().items():
            out[jobs[slot][0]].append(tok)
    for slot in jobs:
        decoder.release(slot)
    return out


def main() -> None:
    from transformers import AutoConfig

    from inference.fast.checkpoint import fetch_from_checkpoint
    from inference.fast.decoder import StaticSlotDecoder
    from inference.fast.mirror import MirroredDecoder, follow
    from inference.fast.parallel import TensorParallel
    from inference.fast.weights import build_weights

    folder, out_file = Path(sys.argv[1]), Path(sys.argv[2])
    group = TensorParallel.from_env("cpu")
    config = AutoConfig.from_pretrained(folder)
    weights = build_weights(
        config,
        fetch_from_checkpoint(folder),
        device=torch.device("cpu"),
        dtype=torch.float32,
        rank=group.rank,
        world=group.world,
    )
    adapter_dir = sys.argv[3] if len(sys.argv) > 3 else None
    decoder = StaticSlotDecoder(weights, parallel=group, capacity=4, max_context=256, lora_slots=2)
    if group.rank != 0:
        calls = follow(decoder, group)
        hits = decoder.prefix_hit_tokens
        piped = decoder.pipeline_steps
        print(
            json.dumps(
                {"rank": group.rank, "calls": calls, "prefix_hit_tokens": hits, "pipeline_steps": piped}
            )
        )
        return
    leader = MirroredDecoder(decoder, group)
    tokens = schedule(leader)
    turns = conversation(leader)
    hits = leader.inner.prefix_hit_tokens
    if adapter_dir is not None:
        tokens.update(lora_schedule(leader, adapter_dir))
    leader.close()
    local_vocab = weights.lm_head.shape[0]  # type: ignore[union-attr]
    out_file.write_text(
        json.dumps(
            {
                "tokens": tokens,
                "turns": turns,
                "prefix_hit_tokens": hits,
                "local_vocab": local_vocab,
                "pipeline_steps": decoder.pipeline_steps,
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    finally:  # gloo's threads torn down by the interpreter's exit can abort a rank ("terminate called ...")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
