"""Rank 0 leads, the other tensor-parallel ranks follow: every decoder call rank 0 makes is replayed on the others.

Only rank 0 runs the bot (adapters, store, engine and its scheduler). Its decoder is wrapped in ``MirroredDecoder``:
each call that changes the decoder's state (submit, admit, step, release...) is first sent to the other ranks (a
shared-memory page, ``channel.py``; gloo where there is none), then run locally. The other ranks run ``follow(decoder, group)``, which runs the same calls
on their own slice of the model in the same order, so the collectives inside them line up. Every rank decides the
same way (same KV pool sizes, agreed at start; same logits, so the same sampled tokens), so the followers need
nothing back. Queries that change nothing (``capacity``, ``can_admit``) are answered by rank 0 alone.

Every member of ``BatchDecoder`` is written out here, each either mirrored (``MIRRORED``) or a query; nothing is
forwarded implicitly, so a capability added to the protocol later must be added here too (tests/inference/
test_decoder_protocol.py checks it) and cannot silently reach rank 0 only. Inspection for tests goes to ``inner``.

A request without a seed gets one here, before it is sent: each rank's sampler would otherwise draw its own.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from inference.decoder import SlotRequest
from inference.fast.decoder import StaticSlotDecoder
from inference.fast.parallel import Parallel

_log = logging.getLogger(__name__)

MIRRORED = (
    "admit",
    "admit_many",
    "submit",
    "complete",
    "step",
    "release",
    "set_prefix_cache",
    "close",
    "load_lora",
    "retire_lora",
    "weights_changed",
)
_STOP = "__stop__"


def _seeded(request: SlotRequest) -> SlotRequest:
    if request.params.seed is not None:
        return request
    params = dataclasses.replace(request.params, seed=random.getrandbits(32))
    return dataclasses.replace(request, params=params)


class MirroredDecoder:
    """The BatchDecoder rank 0's engine uses: ``inner`` (this rank's StaticSlotDecoder) plus the followers."""

    def __init__(self, inner: StaticSlotDecoder, group: Parallel) -> None:
        self.inner = inner
        self.group = group
        self._closed = False

    def _send(self, name: str, *args: Any) -> None:
        self.group.send_call((name, args))

    # ---- queries: rank 0 answers alone (every rank's state is the same) ----

    @property
    def capacity(self) -> int:
        return int(self.inner.capacity)

    @property
    def prefills_in_steps(self) -> bool:
        return self.inner.prefills_in_steps

    @property
    def lora_slots(self) -> int:
        return self.inner.lora_slots

    @property
    def model_intact(self) -> bool:
        return self.inner.model_intact

    @property
    def max_request_tokens(self) -> int:
        return int(self.inner.max_request_tokens)

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        return bool(self.inner.can_admit(prompt_len, max_new_tokens))

    def can_admit_together(self, sizes: Sequence[tuple[int, int]]) -> bool:
        return bool(self.inner.can_admit_together(sizes))

    def take_prefill_failures(self) -> dict[int, BaseException]:
        """Rank 0's failures; each follower takes its own after every call (``follow``)."""
        return self.inner.take_prefill_failures()

    # ---- calls that change state: sent to the followers first, then run here ----

    def admit(self, request: SlotRequest) -> int:
        request = _seeded(request)
        self._send("admit", request)
        return int(self.inner.admit(request))

    def admit_many(self, requests: Iterable[SlotRequest]) -> dict[int, int]:
        seeded = [_seeded(r) for r in requests]
        self._send("admit_many", seeded)
        return dict(self.inner.admit_many(seeded))

    def submit(self, request: SlotRequest) -> None:
        request = _seeded(request)
        self._send("submit", request)
        self.inner.submit(request)

    def complete(self, slots: Sequence[int]) -> dict[int, int]:
        self._send("complete", list(slots))
        return dict(self.inner.complete(slots))

    def step(self) -> dict[int, int]:
        self._send("step")
        return dict(self.inner.step())

    def release(self, slot: int) -> None:
        self._send("release", slot)
        self.inner.release(slot)

    def set_prefix_cache(self, on: bool) -> None:
        self._send("set_prefix_cache", on)
        self.inner.set_prefix_cache(on)

    def load_lora(self, key: str, path: str) -> None:
        """Every rank reads its slice of the adapter in ``path`` into its pool (the same slot on every rank: the
        pools make the same choices)."""
        self._send("load_lora", key, path)
        self.inner.load_lora(key, path)

    def retire_lora(self, key: str) -> None:
        self._send("retire_lora", key)
        self.inner.retire_lora(key)

    def weights_changed(self) -> bool:
        self._send("weights_changed")
        return self.inner.weights_changed()

    def close(self) -> None:
        """Close this decoder and stop the followers (their ``follow`` returns)."""
        if self._closed:
            return
        self._closed = True
        self._send(_STOP)
        self.inner.close()
        self.group.close()


def _replayed(decoder: StaticSlotDecoder) -> dict[str, Callable[..., object]]:
    """The follower's side of each mirrored call (``MIRRORED``), bound to its decoder."""
    return {
        "admit": decoder.admit,
        "admit_many": decoder.admit_many,
        "submit": decoder.submit,
        "complete": decoder.complete,
        "step": decoder.step,
        "release": decoder.release,
        "set_prefix_cache": decoder.set_prefix_cache,
        "close": decoder.close,
        "load_lora": decoder.load_lora,
        "retire_lora": decoder.retire_lora,
        "weights_changed": decoder.weights_changed,
    }


def follow(decoder: StaticSlotDecoder, group: Parallel) -> int:
    """Run rank 0's decoder calls on this rank's decoder until rank 0 closes; returns the number of calls run.

    A call that fails here failed on rank 0 too (the same state, the same inputs): it is logged and skipped, as
    rank 0's engine fails that request and goes on."""
    calls = 0
    replay = _replayed(decoder)
    while True:
        name, args = group.recv_call()
        if name == _STOP:
            decoder.close()
            group.close()
            _log.info("follower rank %d: leader closed after %d calls", group.rank, calls)
            return calls
        if name not in replay:
            raise RuntimeError(f"follower got an unknown call {name!r}")
        calls += 1
        try:
            replay[name](*args)
        except Exception as exc:
            _log.warning("follower rank %d: %s failed as on rank 0 (%s)", group.rank, name, exc)
        decoder.take_prefill_failures()  # rank 0's engine ends those requests; here the slots are already free
