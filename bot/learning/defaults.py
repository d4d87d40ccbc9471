"""Training defaults for the demo model, apart from the 70B's (the ``FinetuneSettings`` defaults).

The tiny demo model needs a learning rate fifty times the 70B's and a fixed number of steps to learn two dozen team
facts in one run; the 70B's defaults (2e-4, 3 epochs, batches of 8 sequences fed one by one) would teach it nothing.
Only settings left at their default are replaced, and only when ``model.is_demo`` is on (``hanbot chat --demo`` and
the tests); a value set in the environment or a TOML file always wins.
"""

from __future__ import annotations

from typing import Any

from bot.settings import Settings

DEMO_FINETUNE: dict[str, Any] = {
    "learning_rate": 1e-2,
    "max_steps": 120,
    "batch_size": 8,
    "micro_batch_size": 8,
    "max_seq_len": 512,
}


def effective_settings(settings: Settings) -> Settings:
    """``settings`` with the demo model's training defaults where nothing was set (unchanged for other models)."""
    if not settings.model.is_demo:
        return settings
    finetune = settings.finetune
    unset = {name: value for name, value in DEMO_FINETUNE.items() if name not in finetune.model_fields_set}
    if not unset:
        return settings
    return settings.model_copy(update={"finetune": finetune.model_copy(update=unset)})
