"""The model a fine-tune trains: the base in 4-bit (QLoRA) on CUDA where bitsandbytes is there, else in full
precision, with a LoRA on every linear layer (PEFT), new or continued from the active version.

Importable without CUDA or bitsandbytes: both are looked up only when asked for.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bot.learning.job import TrainJob

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: str
    quantized: bool
    dtype: torch.dtype


def choose_placement(job: TrainJob) -> Placement:
    device = job.device
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    on_cuda = device.startswith("cuda")
    if job.quantization == "4bit" and not (on_cuda and bitsandbytes_available()):
        raise RuntimeError("4-bit training needs CUDA and the bitsandbytes package")
    quantized = job.quantization == "4bit" or (
        job.quantization == "auto" and on_cuda and bitsandbytes_available()
    )
    dtype = torch.bfloat16 if on_cuda else torch.float32
    return Placement(device=device, quantized=quantized, dtype=dtype)


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(name: str, placement: Placement) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": placement.dtype}
    if placement.quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=placement.dtype,
        )
        kwargs["device_map"] = {"": placement.device}
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if not placement.quantized:
        module: torch.nn.Module = model
        module.to(torch.device(placement.device))
    if placement.device.startswith("cuda"):
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


SMALL_MODEL_PARAMETERS = 50_000_000


def limit_cpu_threads(model: torch.nn.Module, placement: Placement) -> None:
    """One thread for a small model on the CPU (the demo model): its matrices are too small to split, and on a busy
    machine spinning OpenMP threads made a 40-step run take 60 s instead of 6."""
    if placement.device == "cpu" and sum(p.numel() for p in model.parameters()) <= SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of every linear layer, the output head included (``q_proj``, ..., ``down_proj``, ``lm_head``).

    PEFT's "all-linear" leaves the head out; training it too lets a LoRA raise tokens the base almost never emits
    (new names, ids, Korean syllables a small model never produced), for a few MB more on a 70B.
    """
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_config(job: TrainJob, model: torch.nn.Module) -> LoraConfig:
    return LoraConfig(
        r=job.lora_r,
        lora_alpha=job.lora_alpha,
        lora_dropout=job.lora_dropout,
        target_modules=list(job.target_modules) if job.target_modules else linear_layer_names(model),
        bias="none",
        task_type="CAUSAL_LM",
    )


def with_lora(base: PreTrainedModel, path: str, *, trainable: bool) -> PeftModel:
    return PeftModel.from_pretrained(base, path, is_trainable=trainable)


def with_new_lora(base: PreTrainedModel, job: TrainJob) -> PeftModel:
    model = get_peft_model(base, lora_config(job, base))
    assert isinstance(model, PeftModel)
    return model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
