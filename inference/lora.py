"""Switching LoRA adapters on the served model without reloading its base weights.

Uses transformers' PEFT integration on the model object itself (``load_adapter``, ``set_adapter``,
``enable_adapters``/``disable_adapters``): the LoRA layers wrap the base linear layers in place, so the model object
and its base weight tensors stay the same. Loading a name again replaces that adapter's weights (hot swap).
All calls run on the model worker thread, between decode steps.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel

from bot.errors import EngineError

_log = logging.getLogger(__name__)


class LoraSwitch:
    def __init__(self, model: PreTrainedModel | None) -> None:
        self._model = model
        self._paths: dict[str, str] = {}
        self.active: str | None = None

    @property
    def loaded(self) -> dict[str, str]:
        return dict(self._paths)

    def load(self, name: str, path: str) -> None:
        """Load (or replace) adapter ``name`` from ``path``; which adapter serves does not change."""
        model = self._require_model()
        if name in self._paths:
            model.delete_adapter(name)
        try:
            model.load_adapter(path, adapter_name=name)
        except Exception as exc:
            raise EngineError(
                f"could not load LoRA {name!r} from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        self._paths[name] = path
        self._apply()
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
            model.load_adapter(path, adapter_name=name)
        self._apply()

    def _apply(self) -> None:
        model = self._require_model()
        if not self._paths:
            return
        if self.active is None:
            model.disable_adapters()
        else:
            model.set_adapter(self.active)
            model.enable_adapters()

    def _require_model(self) -> PreTrainedModel:
        if self._model is None:
            raise EngineError("the model is offloaded (engine paused): resume first")
        return self._model
