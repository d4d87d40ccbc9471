"""Read a safetensors checkpoint slice by slice: each tensor-parallel rank loads only the rows/columns it keeps.

A 70B checkpoint in bf16 is 141 GB; loading it whole on every rank would need that much host memory per rank.
``fetch_from_checkpoint(folder)`` returns a ``weights.Fetch`` that opens the shard holding a tensor (the index file
``model.safetensors.index.json`` says which) and reads just the asked slice, memory-mapped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from inference.fast.weights import Fetch

_log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """{tensor name: the file holding it}."""
    index = folder / INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SINGLE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    raise FileNotFoundError(f"{folder} holds no {INDEX} or {SINGLE} (a safetensors checkpoint is needed)")


def fetch_from_checkpoint(folder: str | Path) -> Fetch:
    files = checkpoint_files(Path(folder))
    handles: dict[Path, object] = {}

    def fetch(name: str, dim: int | None, part: slice | None) -> torch.Tensor:
        path = files.get(name)
        if path is None:
            raise KeyError(f"{name} is not in the checkpoint at {folder}")
        f = handles.get(path)
        if f is None:
            f = handles[path] = safe_open(str(path), framework="pt")
        sl = f.get_slice(name)  # type: ignore[attr-defined]
        if dim is None or part is None:
            return sl[:]  # type: ignore[no-any-return]
        return (sl[part] if dim == 0 else sl[:, part]).contiguous()  # type: ignore[no-any-return]

    return fetch
