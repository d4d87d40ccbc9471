"""Load any causal LM (hub id or local folder) with the placement and precision the settings ask for.

Every failure becomes one ModelLoadError that names the model and says what to try: no network, an unknown id or a
missing folder, not enough memory, a quantization this machine cannot run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bot.errors import ModelLoadError
from bot.settings import ModelSettings
from inference.load_progress import checkpoint_files, download_files, loading_progress, wants_bar

_log = logging.getLogger(__name__)

_HUB_PROBE_TIMEOUT_S = 10.0

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load the tokenizer and the model named by ``settings``; raise ModelLoadError with advice on failure."""
    name = settings.name_or_path
    local = _is_local(name)
    check_source(name, local)
    check_quantization(settings)
    kwargs = model_kwargs(settings)
    local = local or hub_files_are_local(name, settings.revision)
    _log.info(
        "loading model %s (dtype=%s, device_map=%s, quantization=%s)",
        name,
        settings.dtype,
        settings.device_map,
        settings.quantization,
    )
    bar = wants_bar(settings.progress_bar)
    folder = Path(name).expanduser() if _is_local(name) else _hub_folder(name, settings.revision, local, bar)
    tokenizer = _load_tokenizer(name, settings.revision, local)
    with loading_progress(checkpoint_files(folder) if folder else [], bar=bar):
        model = _load_weights(name, kwargs, local)
    model.eval()
    _log.info("model %s loaded: %d parameters", name, sum(p.numel() for p in model.parameters()))
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def checkpoint_folder(settings: ModelSettings) -> Path:
    """The local folder of the model's files: the folder itself, or the hub snapshot (downloaded if missing)."""
    name = settings.name_or_path
    local = _is_local(name)
    check_source(name, local)
    if local:
        return Path(name).expanduser()
    cached_only = hub_files_are_local(name, settings.revision)
    folder = _hub_folder(name, settings.revision, cached_only, wants_bar(settings.progress_bar))
    if folder is None:
        raise ModelLoadError(f"could not load model {name!r}: it is not in the local cache (offline)")
    return folder


def _hub_folder(name: str, revision: str | None, cached_only: bool, bar: bool) -> Path | None:
    """The hub model's snapshot folder: downloaded with progress (``inference.load_progress``) unless the cache
    must do; None when the cache must do and does not hold it."""
    if cached_only:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(name, "config.json", revision=revision)
        return Path(config).parent if isinstance(config, str) else None
    try:
        return download_files(name, revision, bar=bar)
    except Exception as exc:
        raise _explain(name, exc) from exc


def check_source(name: str, local: bool) -> None:
    """A path-looking name must exist; a hub id is only checked by the download itself."""
    if local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(
            f"model {name!r}: no such folder. Check model.name_or_path (HANBOT_MODEL__NAME_OR_PATH), "
            "or build the demo model with `python -m bot build-demo-model` and point the setting at it."
        )


def hub_files_are_local(name: str, revision: str | None) -> bool:
    """Whether a hub id must be loaded from the local cache only: offline mode, or a hub that does not answer.

    The hub is asked once, without retries, before any download: huggingface_hub's downloads retry a refused
    connection with back-off and a warning per try (about a minute of repeated warnings offline). A hub that does not
    answer with the model in the cache means "use the cache"; without it, one ModelLoadError that says what to do.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    if constants.HF_HUB_OFFLINE:
        return True
    try:
        HfApi().model_info(name, revision=revision, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception as exc:
        if cached:
            _go_offline()
            _log.warning(
                "the Hugging Face Hub did not answer for %s (%s); using the cached copy",
                name,
                type(exc).__name__,
            )
            return True
        raise _explain(name, exc) from exc
    return False


def _go_offline() -> None:
    """The hub does not answer: this process stays offline, so nothing (the adapter lookup, the tokenizer's extra
    files, a fine-tune's loading) retries it with a warning per try. Child processes inherit it."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"


def check_quantization(settings: ModelSettings) -> None:
    if settings.quantization in ("8bit", "4bit"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"model {settings.name_or_path!r}: {settings.quantization} loading needs an NVIDIA GPU "
                "(bitsandbytes), and none is visible here. Set model.quantization to 'none' "
                "(HANBOT_MODEL__QUANTIZATION=none) or run on a GPU machine."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelLoadError(
                f"model {settings.name_or_path!r}: {settings.quantization} loading needs the bitsandbytes "
                "package: `pip install bitsandbytes`, or set model.quantization to 'none'."
            ) from None


def model_kwargs(settings: ModelSettings) -> dict[str, Any]:
    """The keyword arguments for ``from_pretrained``: dtype, placement, memory caps and quantization."""
    kwargs: dict[str, Any] = {"dtype": _DTYPES[settings.dtype]}
    if settings.revision:
        kwargs["revision"] = settings.revision
    device_map = settings.device_map or None
    if device_map is not None and device_map.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"model {settings.name_or_path!r}: device_map {device_map!r} asks for a GPU, but none is visible. "
            "Set model.device_map to 'cpu' or 'auto' (HANBOT_MODEL__DEVICE_MAP)."
        )
    if device_map is not None:
        kwargs["device_map"] = device_map
    if settings.max_memory:
        kwargs["max_memory"] = {_device_key(k): v for k, v in settings.max_memory.items()}
    quantization = _quantization_config(settings)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return kwargs


def _device_key(key: str) -> int | str:
    return int(key) if key.isdigit() else key


def _quantization_config(settings: ModelSettings) -> Any:
    if settings.quantization == "8bit":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)
    if settings.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    return None


def _is_local(name: str) -> bool:
    """A name is a local path when it exists, is absolute or starts with ./ ~ or ..; else a hub id."""
    path = Path(name).expanduser()
    return path.exists() or path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def _load_tokenizer(name: str, revision: str | None, local: bool) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(  # type: ignore[no-any-return]
            name, revision=revision, local_files_only=local
        )
    except Exception as exc:
        raise _explain(name, exc) from exc


def _load_weights(name: str, kwargs: dict[str, Any], local: bool) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(  # type: ignore[no-any-return]
            name, local_files_only=local, **kwargs
        )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _explain(name, exc) from exc


def _explain(name: str, exc: BaseException) -> ModelLoadError:
    """Turn a loading exception into one sentence that names the model and what to try."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in lowered or isinstance(exc, MemoryError):
        advice = (
            "not enough memory. Try model.quantization '8bit' or '4bit' (HANBOT_MODEL__QUANTIZATION), "
            "more GPUs with model.device_map 'auto' and model.max_memory, or a smaller model."
        )
    elif (
        "offline" in lowered
        or "connection" in lowered
        or "couldn't connect" in lowered
        or "socket" in lowered
    ):
        advice = (
            "could not reach the Hugging Face Hub and the model is not in the local cache. Download it on a "
            f"machine with network (`hf download {name} --local-dir <folder>`) and set model.name_or_path to that folder, "
            "or check the network and HF_TOKEN for gated models."
        )
    elif "not a valid model identifier" in lowered or "repository not found" in lowered or "404" in lowered:
        advice = (
            "unknown model id or a private repository. Check the spelling of model.name_or_path "
            "(HANBOT_MODEL__NAME_OR_PATH) and set HF_TOKEN if the model is gated."
        )
    elif (
        "does not appear to have a file" in lowered or "no file named" in lowered or "config.json" in lowered
    ):
        advice = "the folder does not hold a transformers model (config.json and weights). Check the path."
    else:
        advice = "see the error above; check model.name_or_path, model.dtype and model.device_map."
    _log.debug("could not load model %s: %s", name, text)  # the caller prints the ModelLoadError once
    return ModelLoadError(f"could not load model {name!r}: {advice} ({text[:300]})")
