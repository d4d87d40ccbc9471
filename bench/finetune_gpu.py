"""One QLoRA training step of the real Llama-3-70B shape at 2048 tokens, with random weights, on one GPU.

The GPU machine cannot download the weights, and a training step's time and memory depend on shapes, not on weight
values. So the model is built on the meta device; every linear layer of the 80 decoder layers becomes a bitsandbytes
NF4 ``Linear4bit`` (double quantisation, bf16 compute: the QLoRA recipe) whose random bf16 weights are made and
quantised on the GPU one matrix at a time; embeddings, norms (ones) and the head are materialised in bf16. Then the
product's own code takes over: ``inference.finetune.modeling`` puts a LoRA on every linear layer (the head included)
and ``inference.finetune.train`` runs the assistant-only loss with gradient checkpointing and AdamW, exactly as a
nightly fine-tune would.

Run from the repository root on the GPU machine (bitsandbytes is not installed there: carry its wheel, see
docs/learning.md):

    python3 bench/finetune_gpu.py          # writes $RESULTS_DIR/finetune-gpu.json (default: bench/results)

Environment: RESULTS_DIR; SEQ_LEN (2048); STEPS (3: the first is a warm-up, the others are timed); LORA_R (16);
SHAPE=tiny (a 2-layer model, for a smoke test anywhere, CPU included); DEVICE (cuda:0, or cpu with SHAPE=tiny);
QUANT (nf4; none: plain linears, for a smoke test where bitsandbytes is missing); STOP_FILE (steps go on, up to
STEPS, until this file exists, then the run ends without the held-out pass: bench/train_while_serving.py's trainer;
each step's start and end, epoch seconds, are in step<N>_at).
Figures are printed and the JSON rewritten as they come, so a run that dies part-way still leaves what it measured.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import transformers  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402
from accelerate.utils import set_module_tensor_to_device  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

OUT_DIR = Path(os.environ.get("RESULTS_DIR") or REPO / "bench" / "results")
OUT_FILE = OUT_DIR / "finetune-gpu.json"
SEQ_LEN = int(os.environ.get("SEQ_LEN", "2048"))
STEPS = max(2, int(os.environ.get("STEPS", "3")))
LORA_R = int(os.environ.get("LORA_R", "16"))
TINY = os.environ.get("SHAPE") == "tiny"
DEVICE = os.environ.get("DEVICE", "cuda:0")
QUANT = os.environ.get("QUANT", "nf4")
STOP_FILE = os.environ.get("STOP_FILE")
PARENT = os.getppid()

results: dict[str, Any] = {}


def log(key: str, value: Any) -> None:
    results[key] = value
    print(f"{key}: {value}", flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    OUT_FILE.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


def llama3_70b_config() -> LlamaConfig:
    if TINY:
        return LlamaConfig(
            vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        )  # fmt: skip
    return LlamaConfig(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
        bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=False,
    )  # fmt: skip


def environment() -> None:
    log("python", platform.python_version())
    log("torch", torch.__version__)
    log("transformers", transformers.__version__)
    import peft

    log("peft", peft.__version__)
    log("quant", QUANT)
    if QUANT == "nf4":
        import bitsandbytes

        log("bitsandbytes", bitsandbytes.__version__)
    if DEVICE.startswith("cuda"):
        log("gpu", torch.cuda.get_device_name(torch.device(DEVICE)))
        free, total = torch.cuda.mem_get_info(torch.device(DEVICE))
        log("gpu_free_total_GiB", [round(free / 2**30, 2), round(total / 2**30, 2)])


def build_qlora_base(cfg: LlamaConfig) -> LlamaForCausalLM:
    """The model on the meta device, then each weight made on the device: NF4 for decoder linears (QUANT=nf4), bf16
    for the rest."""
    started = time.time()
    with init_empty_weights():
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    log("params_B", round(sum(p.numel() for p in model.parameters()) / 1e9, 3))
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    if QUANT == "nf4":
        import bitsandbytes as bnb

        for layer in model.model.layers:
            for owner in (layer.self_attn, layer.mlp):
                for name, child in list(owner.named_children()):
                    if isinstance(child, torch.nn.Linear):
                        setattr(owner, name, quantised_linear(bnb, child, gen))
    for name, param in list(model.named_parameters()):
        if param.device.type != "meta":
            continue
        if name.endswith("norm.weight") or "layernorm" in name:
            value = torch.ones(param.shape, dtype=torch.bfloat16, device=DEVICE)
        else:
            value = torch.empty(param.shape, dtype=torch.bfloat16, device=DEVICE).normal_(
                0, 0.02, generator=gen
            )
        set_module_tensor_to_device(model, name, DEVICE, value=value)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    try:  # the rotary buffers were cast to bf16 above: make them again in float32, on the device
        model.model.rotary_emb = LlamaRotaryEmbedding(cfg, device=DEVICE)  # transformers 5.17
    except TypeError:
        model.model.rotary_emb = LlamaRotaryEmbedding(cfg).to(DEVICE)  # later versions take no device
    model.is_loaded_in_4bit = QUANT == "nf4"  # what from_pretrained(quantization_config=...) would have set
    log("materialise_s", round(time.time() - started, 1))
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
        log("weights_GiB", round(torch.cuda.memory_allocated(torch.device(DEVICE)) / 2**30, 2))
    return model


def quantised_linear(bnb: Any, linear: torch.nn.Linear, gen: torch.Generator) -> torch.nn.Module:
    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=False,
        compute_dtype=torch.bfloat16,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    weight = torch.empty(linear.out_features, linear.in_features, dtype=torch.bfloat16, device=DEVICE)
    weight.normal_(0, 0.02, generator=gen)
    q.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=True, quant_type="nf4", blocksize=64, module=q
    ).to(DEVICE)
    del weight
    return q


def one_chat_example(cfg: LlamaConfig) -> Any:
    """2048 random tokens; the second half is "the assistant's reply", the only part with labels."""
    from inference.finetune.examples import IGNORE_INDEX, Encoded

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, cfg.vocab_size - 1000, (SEQ_LEN,), generator=gen).tolist()
    half = SEQ_LEN // 2
    return Encoded(input_ids=ids, labels=[IGNORE_INDEX] * half + ids[half:])


def main() -> int:
    from bot.learning.job import TrainJob
    from inference.finetune.modeling import linear_layer_names, trainable_parameters, with_new_lora
    from inference.finetune.train import accumulate_gradients, heldout_loss

    log("seq_len", SEQ_LEN)
    log("shape", "tiny" if TINY else "llama-3-70b")
    environment()
    cfg = llama3_70b_config()
    model = build_qlora_base(cfg)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()

    job = TrainJob(
        base_model="(random)", train_file="", eval_file="", output_dir="", result_file="",
        lora_r=LORA_R, lora_alpha=2 * LORA_R, batch_size=1, micro_batch_size=1, max_seq_len=SEQ_LEN,
    )  # fmt: skip
    log("lora_targets", linear_layer_names(model))
    model = with_new_lora(model, job)
    params = trainable_parameters(model)
    log("lora_params_M", round(sum(p.numel() for p in params) / 1e6, 2))
    log("lora_layer_type", type(model.base_model.model.model.layers[0].mlp.down_proj).__module__)
    log("lora_param_dtype", str(params[0].dtype))
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    example = one_chat_example(cfg)
    pad_id = 0
    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(DEVICE))

    model.train()
    times = []
    for step in range(STEPS):
        sync()
        started = time.time()
        loss = accumulate_gradients(model, [example], job, pad_id, DEVICE)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        elapsed = time.time() - started
        times.append(elapsed)
        log(f"step{step}_s", round(elapsed, 3))
        log(f"step{step}_at", [round(started, 3), round(started + elapsed, 3)])
        log(f"step{step}_loss", round(loss, 4))
        if DEVICE.startswith("cuda"):
            log("peak_mem_GiB", round(torch.cuda.max_memory_allocated(torch.device(DEVICE)) / 2**30, 2))
            log("peak_reserved_GiB", round(torch.cuda.max_memory_reserved(torch.device(DEVICE)) / 2**30, 2))
        if STOP_FILE and step >= 1 and (Path(STOP_FILE).exists() or os.getppid() != PARENT):
            break  # told to stop, or the process that started this one is gone (killed by a timeout)
    if STOP_FILE:  # the caller times the steps (step<N>_at) against what ran beside them
        log("status", "stopped")
        return 0
    timed = times[1:]
    step_s = sum(timed) / len(timed)
    log("train_step_s", round(step_s, 3))
    log("train_tokens_per_s", round(SEQ_LEN / step_s, 1))
    log("train_trained_tokens_per_s", round((SEQ_LEN // 2) / step_s, 1))

    sync()
    started = time.time()
    eval_loss = heldout_loss(model, [example], job, pad_id)
    sync()
    eval_s = time.time() - started
    log("eval_forward_s", round(eval_s, 3))
    log("eval_tokens_per_s", round(SEQ_LEN / eval_s, 1))
    log("eval_loss", round(eval_loss, 4))
    if DEVICE.startswith("cuda"):
        log("peak_mem_GiB", round(torch.cuda.max_memory_allocated(torch.device(DEVICE)) / 2**30, 2))
    log("status", "ok")
    return 0


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize(torch.device(DEVICE))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a benchmark's boundary: record what broke next to what was measured
        traceback.print_exc()
        log("status", "error")
        log("error", f"{type(exc).__name__}: {exc}"[:2000])
        sys.exit(1)
