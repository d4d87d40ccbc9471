"""Serving LoRA versions without reloading the base weights.

``PoolLoras``: the fast decoder's adapter pool serves every loaded version at once, each request the one it names
(the model is not touched). ``LoraSwitch``, for a decoder that runs the model's own modules (the hf decoder): the
versions are loaded into the model with PEFT; the hf decoder gives each row its own (``resolve`` names it).

``model.load_adapter`` (transformers' PEFT integration) wraps the base linear layers in place with LoRA layers, so
the model object and its base weight tensors stay the same. Switching goes straight to PEFT's tuner layers
(``set_adapter``, ``enable_adapters``), which is what transformers' own switch does, without its PEFT version gate
(transformers 5.24 asks for a PEFT release that is not published yet). Loading a name again loads the new weights
under a fresh internal name, then drops the old ones: requests never see a half-replaced adapter.
All calls run on the model worker thread, between decode steps.
"""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from bot.errors import EngineError

_log = logging.getLogger(__name__)


class LoraSwitch:
    def __init__(self, model: PreTrainedModel | None) -> None:
        self._model = model
        self._paths: dict[str, str] = {}
        self._internal: dict[str, str] = {}  # public name -> adapter name inside the model
        self._versions = itertools.count(1)
        self.active: str | None = None

    @property
    def loaded(self) -> dict[str, str]:
        return dict(self._paths)

    def load(self, name: str, path: str) -> None:
        """Load (or replace) adapter ``name`` from ``path``; which adapter serves does not change."""
        model = self._require_model()
        internal = f"hanbot_lora_{next(self._versions)}"  # module names: no dots, no user text
        try:
            model.load_adapter(path, adapter_name=internal)
        except Exception as exc:
            raise EngineError(
                f"could not load LoRA {name!r} from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        previous = self._internal.get(name)
        self._internal[name], self._paths[name] = internal, path
        self._apply()
        if previous is not None:
            _delete_adapter(model, previous)
        _log.info("LoRA %s loaded from %s (serving: %s)", name, path, self.active or "base")

    def use(self, name: str | None) -> None:
        """Serve with adapter ``name``, or with the base model when None."""
        if name is not None and name not in self._paths:
            raise EngineError(f"LoRA {name!r} is not loaded (loaded: {', '.join(self._paths) or 'none'})")
        self.active = name
        self._apply()
        _log.info("serving with %s", f"LoRA {name}" if name else "the base model")

    def resolve(self, requested: str | None) -> str | None:
        """The adapter's name inside the model for a request's ``lora`` (None: the version serving by default;
        "": the base model), for the hf decoder's mixed batches."""
        if requested is None:
            requested = self.active
        if not requested:
            return None
        internal = self._internal.get(requested)
        if internal is None:
            raise EngineError(f"LoRA {requested!r} is not loaded")
        return internal

    def forget_model(self) -> None:
        """The model was dropped (engine paused); ``attach`` gives the reloaded one back its adapters."""
        self._model = None

    def attach(self, model: PreTrainedModel) -> None:
        self._model = model
        for name, path in self._paths.items():
            model.load_adapter(path, adapter_name=self._internal[name])
        self._apply()

    def _apply(self) -> None:
        model = self._require_model()
        layers = tuner_layers(model)
        if self.active is None:
            for layer in layers:
                layer.enable_adapters(False)
            return
        for layer in layers:
            layer.set_adapter(self._internal[self.active])
            layer.enable_adapters(True)

    def _require_model(self) -> PreTrainedModel:
        if self._model is None:
            raise EngineError("the model is offloaded (engine paused): resume first")
        return self._model


def tuner_layers(model: PreTrainedModel) -> list[Any]:
    """The model's PEFT LoRA layers (none before an adapter was loaded)."""
    if not getattr(model, "_hf_peft_config_loaded", False) and not hasattr(model, "peft_config"):
        return []
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def _delete_adapter(model: PreTrainedModel, internal: str) -> None:
    for layer in tuner_layers(model):
        layer.delete_adapter(internal)
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        config.pop(internal, None)


class PoolLoras:
    """LoRA versions served from the decoder's own adapter pool (the fast decoder, ``lora_slots`` > 0).

    The model is not touched: each version is copied into a pool slot under a fresh id (a reload of a name gets a new
    id, so requests already running keep the weights they started with, and no KV reuse mixes the two), and every
    request is decoded with the version it names (``resolve``).

    More versions than slots (say, more teams with their own version than ``engine.lora_slots``): every version ever
    loaded is remembered with its folder (``known``); the pool holds some of them (``loaded``). When a load finds the
    pool full, the version least recently loaded or asked for by a request is unloaded, never the default, the one
    being loaded, or one that a waiting or running request needs (``pin``). A request for a version that is not in
    the pool waits for its load (``needs_load`` / ``ensure``, engine side): only for a slot whose requests end, never
    for the whole pool to empty. With no slot free of requests at the moment, ``load`` remembers the version and the
    first request for it loads it."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}  # public name -> the decoder's id, for versions in the pool
        self._paths: dict[str, str] = {}  # versions in the pool -> folder
        self._known: dict[str, str] = {}  # every version loaded, in the pool or not -> folder
        self._versions = itertools.count(1)
        self._uses = itertools.count(1)
        self._last_use: dict[str, int] = {}  # name -> when it was last loaded or resolved for a request
        self._pins: dict[str, int] = {}  # name -> requests waiting for it or running with it
        self._pin_lock = threading.Lock()
        self._retiring: set[str] = set()  # decoder ids unloaded here whose slot is not free yet
        self.active: str | None = None

    @property
    def loaded(self) -> dict[str, str]:
        """Versions in the pool (name -> folder)."""
        return dict(self._paths)

    @property
    def known(self) -> dict[str, str]:
        """Every version loaded once, in the pool or unloaded to make room (name -> folder)."""
        return dict(self._known)

    def load(self, decoder: Any | None, name: str, path: str) -> None:
        """Copy version ``name`` into the decoder's pool; with no decoder (engine paused) it is loaded at resume.
        With every slot held by requests, it is remembered and loaded when a request asks for it."""
        if decoder is None:
            if not (Path(path) / "adapter_config.json").is_file():
                raise EngineError(f"could not load LoRA {name!r} from {path}: no adapter_config.json there")
            self._ids.pop(name, None)
            self._paths[name] = self._known[name] = path
            return
        from inference.decoder import AdapterSlotsFull

        try:
            self._load_now(decoder, name, path)
        except AdapterSlotsFull:
            if not (Path(path) / "adapter_config.json").is_file():
                raise EngineError(
                    f"could not load LoRA {name!r} from {path}: no adapter_config.json there"
                ) from None
            self._unload(decoder, name)
            self._known[name] = path
            _log.info(
                "LoRA %s remembered: every pool slot is in use; the first request for it loads it", name
            )

    def _load_now(self, decoder: Any, name: str, path: str) -> None:
        """Load into the pool now (making room by the rule above); AdapterSlotsFull when no slot can be freed."""
        from inference.decoder import AdapterSlotsFull

        key = f"{name}#{next(self._versions)}"
        try:
            self._load_with_room(decoder, name, key, path)
        except AdapterSlotsFull:
            raise
        except Exception as exc:
            raise EngineError(
                f"could not load LoRA {name!r} from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        previous = self._ids.pop(name, None)
        self._paths.pop(name, None)
        self._ids[name], self._paths[name], self._known[name] = key, path, path
        self._last_use[name] = next(self._uses)
        if previous is not None:
            decoder.retire_lora(previous)  # freed once the replies that use it end
        _log.info(
            "LoRA %s loaded from %s into the decoder's pool (default: %s)", name, path, self.active or "base"
        )

    def _load_with_room(self, decoder: Any, name: str, key: str, path: str) -> None:
        from inference.decoder import AdapterSlotsFull

        while True:
            try:
                decoder.load_lora(key, path)
                return
            except AdapterSlotsFull:
                # a version unloaded a moment ago whose last request is still being released frees its slot at
                # once: wait for it rather than unload one more
                self._retiring &= set(getattr(decoder, "adapters", ()))
                if self._retiring:
                    raise
                victim = self._least_recently_used(exclude={self.active, name})
                if victim is None:
                    raise
                _log.info("LoRA pool full: unloading %s (least recently used) to load %s", victim, name)
                self._unload(decoder, victim)

    def _least_recently_used(self, exclude: set[str | None]) -> str | None:
        with self._pin_lock:
            pinned = {n for n, count in self._pins.items() if count > 0}
        candidates = [n for n in self._ids if n not in exclude and n not in pinned]
        return min(candidates, key=lambda n: self._last_use.get(n, 0)) if candidates else None

    def _unload(self, decoder: Any, name: str) -> None:
        """Out of the pool (still known: a request for it loads it again)."""
        key = self._ids.pop(name, None)
        self._paths.pop(name, None)
        if key is not None:
            decoder.retire_lora(key)
            if key in getattr(decoder, "adapters", ()):
                self._retiring.add(key)  # still in use: its slot frees when those requests are released

    def use(self, name: str | None) -> None:
        if name is not None and name not in self._known:
            raise EngineError(f"LoRA {name!r} is not loaded (loaded: {', '.join(self._known) or 'none'})")
        self.active = name
        _log.info("serving with %s by default", f"LoRA {name}" if name else "the base model")

    def resolve(self, requested: str | None) -> str | None:
        """The decoder's adapter id for a request's ``lora`` (None: the default; "": the base model)."""
        if requested is None:
            requested = self.active
        if not requested:
            return None
        key = self._ids.get(requested)
        if key is None:
            raise EngineError(f"LoRA {requested!r} is not loaded")
        self._last_use[requested] = next(self._uses)
        return key

    # ---- requests for versions out of the pool (the engine's side; pins from any thread) ----

    def name_for(self, requested: str | None) -> str | None:
        """The version a request's ``lora`` means (None: the default; "" and None out: the base model)."""
        name = self.active if requested is None else requested
        return name or None

    def pin(self, name: str) -> None:
        """A request needs ``name`` (waiting or running): it is not unloaded to make room until ``unpin``."""
        with self._pin_lock:
            self._pins[name] = self._pins.get(name, 0) + 1

    def unpin(self, name: str) -> None:
        with self._pin_lock:
            left = self._pins.get(name, 0) - 1
            if left > 0:
                self._pins[name] = left
            else:
                self._pins.pop(name, None)

    def needs_load(self, name: str) -> bool:
        """Known but out of the pool: a request for it must wait for ``ensure``."""
        return name in self._known and name not in self._ids

    def ensure(self, decoder: Any | None, name: str) -> bool:
        """Worker thread: load ``name`` into the pool if it is out of it. False when every slot is held by requests
        right now (try again when one ends); raises EngineError when the version cannot be loaded at all."""
        from inference.decoder import AdapterSlotsFull

        path = self._known.get(name)
        if decoder is None or path is None or name in self._ids:
            return True
        try:
            self._load_now(decoder, name, path)
        except AdapterSlotsFull:
            return False
        return True

    def attach(self, decoder: Any) -> None:
        """A new decoder (after a pause): load the versions that were in the pool again (one that fails is dropped,
        with the reason logged; the others serve)."""
        self._ids.clear()
        for name, path in list(self._paths.items()):
            try:
                self.load(decoder, name, path)
            except EngineError as exc:
                self._paths.pop(name, None)
                self._known.pop(name, None)
                if self.active == name:
                    self.active = None
                _log.error("LoRA %s was not loaded again after the pause: %s", name, exc)
