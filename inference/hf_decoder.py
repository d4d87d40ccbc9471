"""HFBatchDecoder: the BatchDecoder over any transformers causal LM, on CPU or GPU.

The running batch shares one left-padded KV cache. A request joins by a prefill of its own (batch 1), whose cache is
then merged into the batch's, padding on the left whichever side is shorter; it leaves by dropping its row, and the
left padding every row shares is trimmed. Each step feeds every row its last sampled token with a per-row attention
mask (padding masked out) and per-row position ids (the row's own length), so a row decodes exactly as it would
alone. Sampling (per-row parameters, repetition penalty over each row's history) is ``inference.sampling``.

LoRA: when the model carries PEFT adapters (``inference.lora.LoraSwitch``), each request is decoded with the adapter
its ``SlotRequest.lora`` names (the adapter's name inside the model; None: the base), through PEFT's mixed-batch
forward (``adapter_names``, one entry per row), so one batch can mix versions and the base.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Cache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from inference.decoder import DecoderDefaults, SlotRequest
from inference.hf_compat import call_model, output_cache
from inference.sampling import RowParams, history_mask, mark_seen, sample_next

_log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """The running batch: row i serves ``slots[i]``; every per-row tensor is ordered the same way."""

    slots: list[int]
    cache: Cache
    width: int  # cache length, padding included
    pads: list[int]  # left padding of each row (host copy of ``pad``: trimming must not read the device)
    pad: torch.Tensor  # [rows] left padding of each row (long)
    next_ids: torch.Tensor  # [rows] the token each row feeds next (sampled, not yet in the cache)
    seen: torch.Tensor  # [rows, vocab] tokens each row has seen (repetition penalty)
    params: RowParams
    adapters: list[str | None]  # each row's adapter inside the model (None: the base)


class HFBatchDecoder(DecoderDefaults):
    """Continuous batching over a transformers causal LM with a dynamic (concatenating) KV cache.

    It prefills at admission, has no adapter pool (PEFT adapters live in the model) and reserves nothing ahead
    (``DecoderDefaults``); it runs the model's own modules, so it follows a change of their weights at once."""

    def __init__(self, model: PreTrainedModel, capacity: int, *, memory_fraction: float = 0.9) -> None:
        self._model = model
        self._capacity = capacity
        self._memory_fraction = memory_fraction
        self._device: torch.device = input_device(model)
        self._batch: _Batch | None = None
        self._keep_logits = "logits_to_keep" in inspect.signature(type(model).forward).parameters
        self._kv_bytes_per_token = _kv_bytes_per_token(model)
        self.tokens_decoded = 0  # tokens sampled by step(), for tests and the benchmark

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def active_slots(self) -> list[int]:
        return list(self._batch.slots) if self._batch else []

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        rows = len(self._batch.slots) if self._batch else 0
        if rows >= self._capacity:
            return False
        if self._device.type != "cuda":
            return True
        width = max(self._batch.width if self._batch else 0, prompt_len) + max_new_tokens
        needed = (rows + 1) * width * self._kv_bytes_per_token - self._cache_bytes()
        free, _total = torch.cuda.mem_get_info(self._device)
        return needed <= free * self._memory_fraction

    def admit(self, request: SlotRequest) -> int:
        """Prefill the prompt alone, sample its first token, then merge its KV cache into the running batch."""
        if self._batch and request.slot in self._batch.slots:
            raise ValueError(f"slot {request.slot} is already active")
        with torch.inference_mode():
            ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self._device)
            with _rows_adapters(self._model, [request.lora]):
                logits, cache = self._prefill(ids)
            params = RowParams.build([request.params], self._device)
            seen = history_mask(request.prompt_ids, logits.shape[-1], self._device)
            first = sample_next(logits, seen, params)
            mark_seen(seen, first)
            self._join(request.slot, cache, ids.shape[1], first, seen, params, request.lora)
        return int(first.item())

    def step(self) -> dict[int, int]:
        """One batched forward for every row; on failure the cache is put back as it was and the error raised."""
        batch = self._batch
        if batch is None:
            return {}
        saved = _cache_tensors(batch.cache)
        try:
            with torch.inference_mode(), _rows_adapters(self._model, batch.adapters):
                tokens = self._decode(batch)
        except BaseException:
            _restore_cache(batch.cache, saved)
            raise
        batch.width += 1
        batch.next_ids = tokens
        self.tokens_decoded += len(batch.slots)
        return dict(zip(batch.slots, tokens.tolist(), strict=True))

    def weights_changed(self) -> bool:
        return True  # the next forward runs the model as it now is

    def release(self, slot: int) -> None:
        batch = self._batch
        if batch is None or slot not in batch.slots:
            return
        row = batch.slots.index(slot)
        keep = [i for i in range(len(batch.slots)) if i != row]
        if not keep:
            self._batch = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        batch.slots = [batch.slots[i] for i in keep]
        for layer in _layers(batch.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        batch.pads = [batch.pads[i] for i in keep]
        batch.pad = batch.pad.index_select(0, index)
        batch.next_ids = batch.next_ids.index_select(0, index)
        batch.seen = batch.seen.index_select(0, index)
        batch.params = batch.params.select(keep)
        batch.adapters = [batch.adapters[i] for i in keep]
        self._trim_shared_padding(batch)

    # ---------------------------------------------------------------- steps

    def _prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
        if self._keep_logits:
            kwargs["logits_to_keep"] = 1
        out = call_model(self._model, **kwargs)
        cache = output_cache(out)
        _check_cache(cache)
        return out.logits[:, -1, :], cache

    def _decode(self, batch: _Batch) -> torch.Tensor:
        columns = torch.arange(batch.width + 1, device=self._device)
        mask = (columns[None, :] >= batch.pad[:, None]).long()
        positions = (batch.width - batch.pad)[:, None]
        kwargs: dict[str, Any] = {
            "input_ids": batch.next_ids[:, None],
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
        }
        out = call_model(self._model, cache=batch.cache, **kwargs)
        logits = out.logits[:, -1, :]
        tokens = sample_next(logits, batch.seen, batch.params)
        mark_seen(batch.seen, tokens)
        return tokens

    def _join(
        self,
        slot: int,
        cache: Cache,
        length: int,
        first: torch.Tensor,
        seen: torch.Tensor,
        params: RowParams,
        adapter: str | None,
    ) -> None:
        pad = torch.zeros(1, dtype=torch.long, device=self._device)
        batch = self._batch
        if batch is None:
            self._batch = _Batch([slot], cache, length, [0], pad, first, seen, params, [adapter])
            return
        width = max(batch.width, length)
        _left_pad(batch.cache, width - batch.width)
        _left_pad(cache, width - length)
        for mine, theirs in zip(_layers(batch.cache), _layers(cache), strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        batch.pads = [p + width - batch.width for p in batch.pads] + [width - length]
        batch.pad = torch.cat([batch.pad + (width - batch.width), pad + (width - length)])
        batch.width = width
        batch.slots.append(slot)
        batch.next_ids = torch.cat([batch.next_ids, first])
        batch.seen = torch.cat([batch.seen, seen])
        batch.params = batch.params.concat(params)
        batch.adapters.append(adapter)

    def _trim_shared_padding(self, batch: _Batch) -> None:
        shared = min(batch.pads)
        if shared <= 0:
            return
        for layer in _layers(batch.cache):
            layer.keys = layer.keys[..., shared:, :]
            layer.values = layer.values[..., shared:, :]
        batch.pads = [p - shared for p in batch.pads]
        batch.pad = batch.pad - shared
        batch.width -= shared

    def _cache_bytes(self) -> int:
        if self._batch is None:
            return 0
        return sum(t.numel() * t.element_size() for t in _cache_tensors(self._batch.cache))


@contextlib.contextmanager
def _rows_adapters(model: PreTrainedModel, names: list[str | None]) -> Iterator[None]:
    """Run the model's PEFT layers with one adapter per batch row (PEFT's mixed-batch forward), whichever adapter
    the model has switched on; nothing to do for a model without adapters."""
    from inference.lora import tuner_layers

    layers = tuner_layers(model)
    if not layers:
        yield
        return
    rows = [name or "__base__" for name in names]

    def inject(_module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return args, {**kwargs, "adapter_names": rows}

    disabled = [layer._disable_adapters for layer in layers]
    handles = [layer.register_forward_pre_hook(inject, with_kwargs=True) for layer in layers]
    try:
        for layer in layers:
            layer._disable_adapters = False  # the mixed-batch path runs only on enabled layers
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, was in zip(layers, disabled, strict=True):
            layer._disable_adapters = was


def _layers(cache: Cache) -> list[Any]:
    return list(cache.layers)


def _check_cache(cache: Cache) -> None:
    odd = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if odd:
        raise TypeError(
            f"HFBatchDecoder needs a plain dynamic KV cache; this model uses {', '.join(sorted(odd))} "
            "(sliding-window or recurrent layers). Serve it with engine.kind 'remote' (vLLM)."
        )


def _left_pad(cache: Cache, amount: int) -> None:
    if amount <= 0:
        return
    for layer in _layers(cache):
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, amount, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, amount, 0))


def _cache_tensors(cache: Cache) -> list[torch.Tensor]:
    return [t for layer in _layers(cache) for t in (layer.keys, layer.values)]


def _restore_cache(cache: Cache, saved: list[torch.Tensor]) -> None:
    for i, layer in enumerate(_layers(cache)):
        layer.keys, layer.values = saved[2 * i], saved[2 * i + 1]


def _kv_bytes_per_token(model: PreTrainedModel) -> int:
    """K and V of one token over all layers (estimate from the config; 0 when the config does not say)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", 0)
    heads = getattr(text, "num_attention_heads", 1)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or getattr(text, "hidden_size", 0) // max(heads, 1)
    element = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
    return int(2 * layers * kv_heads * head_dim * element)


def input_device(model: PreTrainedModel) -> torch.device:
    """Where input ids go: the embedding's device (the first GPU when layers are spread by device_map)."""
    weight = model.get_input_embeddings().weight
    return torch.device(weight.device)  # type: ignore[arg-type]
