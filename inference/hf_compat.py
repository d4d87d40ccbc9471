"""Calling a transformers model with a KV cache across transformers 5.x releases.

5.17 (the GPU machine) names the cache ``past_key_values`` in forward's arguments and outputs; later releases call it
``cache`` and warn about the old name. These two helpers hide the difference.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import Cache


@functools.cache
def _cache_argument(module_type: Any) -> str:
    parameters = inspect.signature(module_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def call_model(module: torch.nn.Module, *, cache: Cache | None = None, **kwargs: Any) -> Any:
    """``module(**kwargs)`` with ``cache`` passed under the name this transformers release uses."""
    if cache is not None:
        module_type: Any = type(module)
        kwargs[_cache_argument(module_type)] = cache
    return module(**kwargs)


def output_cache(output: Any) -> Cache:
    """The KV cache a forward returned (``cache`` or ``past_key_values``)."""
    cache = output.get("cache") if "cache" in output else output.get("past_key_values")
    if cache is None:
        raise RuntimeError("the model returned no KV cache; was use_cache=True passed?")
    return cache  # type: ignore[no-any-return]
