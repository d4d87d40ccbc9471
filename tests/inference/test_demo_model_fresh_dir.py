"""build-demo-model on a fresh data directory (issue 14, fault 12): the folder is made before the training, not after.

A tiny configuration that stops training at once keeps this fast: the build then reaches saving and checking, whose
FAQ check fails (the model learnt nothing), which is the point: on main it failed earlier, unable to make its
temporary folder in a data directory that did not exist yet.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from inference.demo_model import DemoConfig, build_demo_model

UNTRAINED = DemoConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, logit_margin=-math.inf, min_token_prob=0.0
)


@pytest.mark.slow
def test_fault_12_build_demo_model_on_a_fresh_data_directory_gets_past_training(tmp_path: Path) -> None:
    out = tmp_path / "fresh" / "data" / "demo-model"
    with pytest.raises(RuntimeError, match="FAQ question"):
        build_demo_model(out, UNTRAINED)
    assert out.parent.is_dir()
    assert not out.exists(), "a model that fails its check is not published"
    assert list(out.parent.iterdir()) == [], "the staging folder is removed"
