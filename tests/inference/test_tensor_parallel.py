"""Tensor parallelism (inference.fast.parallel, mirror, checkpoint): two ranks on the CPU over gloo compute what
one process computes.

A tiny Llama (grouped-query attention, a vocabulary that does not split evenly) is saved as safetensors; two
processes read their slices of it, and rank 0 drives a schedule of requests that join and leave the batch through
the MirroredDecoder while rank 1 follows. Greedy and seeded tokens equal the single-process decoder's token for
token, and so do conversations of several turns served with prefix reuse (both ranks reuse the same KV blocks).
The same goes for the engine server: `python -m inference serve` started as two ranks answers like one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from inference.fast import StaticSlotDecoder
from inference.fast.parallel import SingleProcess, split
from inference.fast.pipeline import PIPELINE_ENV
from inference.fast.weights import LlamaSpec, RankSlices
from tests.inference.remote_server import demo_engine_env, free_port
from tests.inference.test_fast_decoder import tiny_config as fast_decoder_config
from tests.inference.test_fast_lora import save_adapter
from tests.inference.tp_run import conversation, lora_schedule, schedule

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def tiny_config() -> LlamaConfig:
    return fast_decoder_config(vocab_size=383)  # odd: the second rank's vocabulary rows are padded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy choices are not near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return folder


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }


def run_ranks(args: list[str], world: int, env: dict[str, str] | None = None, stdin: str = "") -> list[str]:
    """Start ``world`` ranks of ``python args...``; returns each rank's stdout (failing on any non-zero exit)."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**rank_env(rank, world, port), **(env or {})},
            cwd=REPO,
        )
        for rank in range(world)
    ]
    outs = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(stdin if rank == 0 else "", timeout=240)
        assert proc.returncode == 0, f"rank {rank} failed:\n{err[-3000:]}"
        outs.append(out)
    return outs


def test_rank_slices_cover_every_row_once() -> None:
    spec = LlamaSpec.from_config(tiny_config())
    cuts = [RankSlices.of(spec, r, 2) for r in range(2)]
    assert [c.q for c in cuts] == [slice(0, 32), slice(32, 64)]
    assert [c.kv for c in cuts] == [slice(0, 8), slice(8, 16)]
    assert [c.ff for c in cuts] == [slice(0, 80), slice(80, 160)]
    assert [c.vocab for c in cuts] == [slice(0, 192), slice(192, 384)]  # 383 rows: the last one padded
    local = spec.for_rank(2)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (4, 1, 80)
    assert local.vocab_size == 383  # logits are gathered whole
    with pytest.raises(ValueError, match="key-value heads"):
        spec.for_rank(4)  # 2 KV heads cannot split 4 ways
    with pytest.raises(ValueError, match="evenly"):
        split(10, 3, "x")


def test_two_ranks_decode_what_one_process_decodes(checkpoint: Path, tmp_path: Path) -> None:
    """Also with a LoRA on every projection and the head: each rank adds its slice's product (row-parallel ones
    before the all-reduce), and a batch mixing the adapter with the base gives one process's tokens."""
    reference_model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    adapter = tmp_path / "adapter"
    save_adapter(reference_model, adapter, seed=3)
    single = StaticSlotDecoder(
        reference_model, capacity=4, max_context=256, parallel=SingleProcess(), lora_slots=2
    )
    reference = schedule(single)
    reference.update(lora_schedule(single, str(adapter)))
    assert reference["lora-a"] != reference["a"]  # the adapter changes the tokens (same prompt, greedy)
    out_file = tmp_path / "tp.json"
    outs = run_ranks(
        [str(REPO / "tests" / "inference" / "tp_run.py"), str(checkpoint), str(out_file), str(adapter)], 2
    )
    result = json.loads(out_file.read_text())
    tokens = result["tokens"]
    assert result["local_vocab"] == 192  # rank 0 held half the vocabulary
    for name in ("a", "b", "c", "lora-a", "lora-base", "lora-c"):  # greedy, seeded, long prompt; with a LoRA
        assert tokens[name] == reference[name], name
    assert len(tokens["d"]) == len(reference["d"]) == 6  # unseeded: rank 0 chose the seed for both ranks
    follower = json.loads(outs[1].strip().splitlines()[-1])
    assert follower["calls"] > 15  # rank 1 replayed every admit, step and release
    # prefix reuse over two ranks: the turns equal one process without reuse, and both ranks reused the same KV
    without_reuse = StaticSlotDecoder(
        reference_model, capacity=4, max_context=256, parallel=SingleProcess(), prefix_cache=False
    )
    schedule(without_reuse)
    assert result["turns"] == conversation(without_reuse)
    assert result["prefix_hit_tokens"] == follower["prefix_hit_tokens"] == 4 * 64  # turns 2 and 3, 2 channels


def test_two_ranks_agree_with_pipelined_steps(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HANBOT_PIPELINE_STEPS=1`` on every rank: each step is launched before the previous one's tokens are read
    (the followers replay the leader's calls, releases included). The tokens are a pipelined single process's, the
    conversation's turns those of plain steps without reuse, and both ranks reused the same KV."""
    monkeypatch.setenv(PIPELINE_ENV, "1")  # the ranks inherit it
    reference_model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    adapter = tmp_path / "adapter"
    save_adapter(reference_model, adapter, seed=3)
    single = StaticSlotDecoder(
        reference_model, capacity=4, max_context=256, parallel=SingleProcess(), lora_slots=2
    )
    assert single.pipeline_steps
    reference = schedule(single)
    reference.update(lora_schedule(single, str(adapter)))
    out_file = tmp_path / "tp.json"
    outs = run_ranks(
        [str(REPO / "tests" / "inference" / "tp_run.py"), str(checkpoint), str(out_file), str(adapter)], 2
    )
    result = json.loads(out_file.read_text())
    for name in ("a", "b", "c", "d", "lora-a", "lora-base", "lora-c"):
        assert result["tokens"][name] == reference[name] or name == "d", name
        assert len(result["tokens"][name]) == len(reference[name]), name
    plain = StaticSlotDecoder(
        reference_model,
        capacity=4,
        max_context=256,
        parallel=SingleProcess(),
        prefix_cache=False,
        pipeline_steps=False,
    )
    assert result["turns"] == conversation(plain)
    follower = json.loads(outs[1].strip().splitlines()[-1])
    assert result["prefix_hit_tokens"] == follower["prefix_hit_tokens"] == 4 * 64
    assert result["pipeline_steps"] and follower["pipeline_steps"]


def test_engine_server_on_two_ranks_answers_like_one(demo_model_dir: Path, tmp_path: Path) -> None:
    """``python -m inference serve`` under a two-rank launch: rank 0 serves HTTP, rank 1 serves its slice of the
    model; a client gets the same greedy reply as from one rank, and a SIGTERM to rank 0 stops both cleanly."""
    import signal

    import httpx

    from inference.demo_model import FAQ

    question, answer = next((q, a) for q, a in FAQ if q.startswith("What does /reset"))
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 64,
    }
    replies = {}
    for world in (1, 2):
        env = demo_engine_env(
            demo_model_dir,
            tmp_path / f"data-{world}",
            HANBOT_ENGINE__DECODER="static",
            HANBOT_ENGINE__TENSOR_PARALLEL=str(world),
        )
        http_port, group_port = free_port(), free_port()
        ranks = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "inference",
                    "serve",
                    "--port",
                    str(http_port),
                    "--served-model-name",
                    "demo",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**env, **rank_env(rank, world, group_port)},
                cwd=REPO,
            )
            for rank in range(world)
        ]
        try:
            replies[world] = _ask_when_up(f"http://127.0.0.1:{http_port}", body, ranks, httpx)
        finally:
            ranks[0].send_signal(signal.SIGTERM)
            outs = [rank.communicate(timeout=120)[0] for rank in ranks]
        for rank, (proc, out) in enumerate(zip(ranks, outs, strict=True)):
            assert proc.returncode == 0, f"rank {rank} of {world}:\n{out[-3000:]}"
        if world == 2:
            assert "following rank 0" in outs[1]  # rank 1 served its slice, and only rank 0 listened
    assert replies[2] == replies[1] == answer


def _ask_when_up(base: str, body: dict, ranks: list[subprocess.Popen[str]], httpx) -> str:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert all(rank.poll() is None for rank in ranks), "a rank exited before serving"
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"]).strip()
