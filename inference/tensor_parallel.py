"""One model over several GPUs (tensor parallel), started by ``torchrun``: rank 0 serves, the others follow.

    torchrun --nproc-per-node 2 -m inference serve      # with HANBOT_ENGINE__TENSOR_PARALLEL=2

Every rank reads its slice of the safetensors checkpoint (``inference.fast.checkpoint``) straight onto its GPU and
builds a ``StaticSlotDecoder`` over it (``inference.fast.parallel``: heads and MLP columns split, two all-reduces a
layer). Rank 0 builds the LocalEngine around its decoder wrapped in ``MirroredDecoder`` and serves it over HTTP
(``inference.serve``); bots reach it as a remote engine. The other ranks run ``follower_main`` and replay rank 0's decoder
calls until it closes. LoRA adapters are served from each rank's adapter pool (``inference.fast.lora``): rank 0's
load calls are replayed on the other ranks, which read their slices of the adapter from the same folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from bot.errors import ModelLoadError
from bot.settings import Settings
from inference.decoders import static_options
from inference.fast.checkpoint import fetch_from_checkpoint
from inference.fast.decoder import StaticSlotDecoder
from inference.fast.mirror import MirroredDecoder, follow
from inference.fast.parallel import TensorParallel
from inference.fast.weights import build_weights
from inference.loading import checkpoint_folder
from inference.local_engine import LocalEngine

_log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def check_launch(settings: Settings) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != settings.engine.tensor_parallel:
        raise ModelLoadError(
            f"engine.tensor_parallel is {settings.engine.tensor_parallel} but {world} processes were started: "
            f"start with `torchrun --nproc-per-node {settings.engine.tensor_parallel} -m inference serve`"
        )


def join_group(settings: Settings) -> TensorParallel:
    check_launch(settings)
    return TensorParallel.from_env("cuda" if torch.cuda.is_available() else "cpu")


def rank_decoder(settings: Settings, group: TensorParallel, folder: Path, config: Any) -> StaticSlotDecoder:
    """This rank's slice of the checkpoint, on its GPU (the CPU without one), served by a static decoder."""
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    dtype = _DTYPES.get(settings.model.dtype) or getattr(config, "torch_dtype", None) or torch.bfloat16
    weights = build_weights(
        config,
        fetch_from_checkpoint(folder),
        device=device,
        dtype=dtype,
        rank=group.rank,
        world=group.world,
        fp8=settings.engine.fp8_weights,
    )
    options = static_options(settings.engine)
    del options["fp8"]  # the weights are already built (in FP8 when asked)
    return StaticSlotDecoder(weights, parallel=group, max_context=settings.model.context_length, **options)


def skeleton_model(folder: Path, config: Any) -> Any:
    """The transformers model on the meta device: config, generation config and module names, no weights (the
    decoders hold those). The engine reads its settings from it."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        pass  # no generation_config.json: the config's defaults
    return model.eval()


def leader_engine(settings: Settings) -> LocalEngine:
    """Rank 0's engine: the LocalEngine over its decoder, which sends every call to the other ranks first."""
    group = join_group(settings)
    if group.rank != 0:
        raise RuntimeError("leader_engine runs on rank 0 only; the other ranks run follower_main")
    folder = checkpoint_folder(settings.model)
    config = AutoConfig.from_pretrained(folder)
    decoder = MirroredDecoder(rank_decoder(settings, group, folder, config), group)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LocalEngine(
        skeleton_model(folder, config),
        tokenizer,
        engine=settings.engine,
        generation=settings.generation,
        context_length=settings.model.context_length,
        decoder_factory=lambda _model, _settings: decoder,
    )


def follower_main(settings: Settings) -> int:
    """A rank other than 0: build this rank's decoder and replay rank 0's calls until it closes."""
    group = join_group(settings)
    folder = checkpoint_folder(settings.model)
    decoder = rank_decoder(settings, group, folder, AutoConfig.from_pretrained(folder))
    _log.info("rank %d of %d ready; following rank 0", group.rank, group.world)
    follow(decoder, group)
    return 0
