"""Switching LoRA adapters on the served model without reloading its base weights.

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
        layers = _tuner_layers(model)
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


def _tuner_layers(model: PreTrainedModel) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def _delete_adapter(model: PreTrainedModel, internal: str) -> None:
    for layer in _tuner_layers(model):
        layer.delete_adapter(internal)
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        config.pop(internal, None)
