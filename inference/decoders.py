"""Choosing the batch decoder: ``engine.decoder`` "hf" (any model, any device), "static" (``inference.fast``:
static KV slots and CUDA graphs for Llama models), or "auto" (static on a GPU, hf elsewhere).

``inference.fast`` is imported only when asked for; when it is missing or cannot serve the model, the hf decoder
takes over and the log says why. Not with ``engine.fp8_weights``: that build releases the model's bf16 weights as it
quantises them, so its failure is an error (the hf decoder would have nothing left to run).
Tensor-parallel decoders are built by ``inference.tensor_parallel``, not here.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedModel

from bot.settings import EngineSettings
from inference.decoder import BatchDecoder
from inference.hf_decoder import HFBatchDecoder, input_device

_log = logging.getLogger(__name__)


def make_decoder(model: PreTrainedModel, settings: EngineSettings) -> BatchDecoder:
    wants_fast = settings.decoder == "static" or (
        settings.decoder == "auto" and input_device(model).type == "cuda"
    )
    if wants_fast or settings.fp8_weights:
        fast = _fast_decoder(model, settings)
        if fast is not None:
            return fast
    return HFBatchDecoder(model, settings.max_batch_size)


def static_options(settings: EngineSettings) -> dict[str, Any]:
    """The StaticSlotDecoder arguments the engine settings give (capacity, caches, FP8, adapter pool, reserve)."""
    return {
        "capacity": settings.max_batch_size,
        "cache_dir": settings.cache_dir,
        "fp8": settings.fp8_weights,
        "lora_slots": settings.lora_slots,
        "lora_max_rank": settings.lora_max_rank,
        "keep_free_bytes": int(settings.reserve_training_gib * (1 << 30)),
        "prefix_cache": settings.prefix_cache,
        "kv_fp8": settings.fp8_kv_cache,
    }


def _fast_decoder(model: PreTrainedModel, settings: EngineSettings) -> BatchDecoder | None:
    try:
        from inference.fast import StaticSlotDecoder
    except ImportError as exc:
        _log.warning("the static decoder (inference.fast) is not available (%s): using the hf decoder", exc)
        return None
    try:
        decoder: BatchDecoder = StaticSlotDecoder(model, **static_options(settings))
    except Exception as exc:
        if settings.fp8_weights:
            raise
        _log.warning("the static decoder cannot serve this model (%s): using the hf decoder", exc)
        return None
    _log.info(
        "using the static decoder (inference.fast), %d slots%s",
        settings.max_batch_size,
        ", FP8 weights" if settings.fp8_weights else "",
    )
    return decoder
