"""Tensor parallelism for the fast decoder: this process's place in a group of processes, one GPU each.

Each rank holds a slice of every weight matrix (Megatron style): the attention heads and the MLP's intermediate
columns are split, so Q/K/V and gate/up are column slices and the O and down projections are row slices whose
partial outputs are summed with one all-reduce each per layer. The vocabulary projection is split by rows and the
logits are gathered, so every rank holds the same full logits and samples the same token (the sampler draws its
randomness from (seed, position, token id), not from a generator). Embeddings and norms are replicated.

``SingleProcess`` is the no-op group (one GPU, or the CPU). ``TensorParallel.from_env()`` joins the group that
``torchrun`` describes in the environment: gloo for the decoder calls rank 0 sends the other ranks (see
``mirror.py``) and for agreeing on sizes; for the tensors, NCCL called directly through ctypes on GPUs (as vLLM's
pynccl does: a raw NCCL call carries no host-side state, so it can be captured in the decode step's CUDA graph and
replayed; a ProcessGroupNCCL collective keeps per-call bookkeeping that a replay does not advance), gloo on CPU.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from inference.fast.channel import ShmChannel

_log = logging.getLogger(__name__)


class SingleProcess:
    """No tensor parallelism: rank 0 of 1; the collectives are identities."""

    rank = 0
    world = 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather_rows(self, x: torch.Tensor, full: int) -> torch.Tensor:
        """[rows, cols] → [rows, full] (the columns of all ranks side by side, cut to ``full``)."""
        return x[:, :full] if x.shape[1] != full else x

    def agree_min(self, value: int) -> int:
        return value

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def send_call(self, obj: Any) -> None:
        """Rank 0: tell the other ranks what to run next (nothing to tell on one rank)."""

    def recv_call(self) -> Any:
        raise RuntimeError("a single process has no rank 0 to follow")

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        """Leave the group (nothing to leave on one rank)."""


class TensorParallel(SingleProcess):
    """A torch.distributed group: a gloo ``control`` group for objects, and for tensors ``nccl`` (GPUs) or the
    gloo group itself (CPU)."""

    def __init__(self, rank: int, world: int, control: Any, nccl: NcclComm | None = None) -> None:
        self.rank = rank
        self.world = world
        self._control = control
        self._nccl = nccl
        self._p2p: SymmMemAllReduce | None = None
        self._channel: ShmChannel | None = None
        self._closed = False

    @property
    def all_reduce_kind(self) -> str:
        """What sums the decode step's small tensors: "symm_mem" (one-shot over peer memory), "nccl" or "gloo"."""
        return "symm_mem" if self._p2p else "nccl" if self._nccl else "gloo"

    @classmethod
    def from_env(cls, device_type: str = "cuda", timeout_s: float = 1800.0) -> TensorParallel:
        """Join the process group ``torchrun`` set up in the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        rank, world = dist.get_rank(), dist.get_world_size()
        control = (
            dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
            if dist.get_backend() != "gloo"
            else dist.group.WORLD
        )
        group = cls(rank, world, control)
        if device_type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
            group._nccl = NcclComm.create(group, device)
            if os.environ.get("HANBOT_TP_ALLREDUCE", "auto") != "nccl":
                group._p2p = SymmMemAllReduce.try_create(group, device)
        if os.environ.get("HANBOT_TP_CHANNEL", "shm") == "shm":
            group._open_channel()
        _log.info(
            "tensor parallel: rank %d of %d (%s; calls over %s)",
            rank,
            world,
            group.all_reduce_kind,
            "shared memory" if group._channel else "gloo",
        )
        return group

    def _open_channel(self) -> None:
        """Rank 0 makes the shared page for its calls, the others attach (all ranks run on one host)."""
        try:
            made = ShmChannel.create(self.world - 1) if self.rank == 0 else None
        except OSError as exc:
            _log.warning("no shared memory for the decoder calls (%s): gloo carries them", exc)
            made = None
        name = self.broadcast_object(made.name if made else None)
        if name is None:
            return
        self._channel = made or ShmChannel.attach(name, self.world - 1, self.rank - 1)
        self.barrier()

    def close(self) -> None:
        """Leave the group: every rank calls this once its last call has run (rank 0 after sending the stop, the
        others on receiving it); they meet at a barrier, so none tears its connections down while another still
        uses them. Then drop the shared page (rank 0 removes it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.barrier()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if dist.is_initialized():
            dist.destroy_process_group()

    def send_call(self, obj: Any) -> None:
        if self._channel is not None:
            self._channel.write(obj, oversized=self.broadcast_object)
        else:
            self.broadcast_object(obj)

    def recv_call(self) -> Any:
        if self._channel is not None:
            return self._channel.read(oversized=lambda: self.broadcast_object(None))
        return self.broadcast_object(None)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self._p2p is not None and self._p2p.fits(x):
            self._p2p.all_reduce(x)
        elif self._nccl is not None:
            self._nccl.all_reduce(x)
        else:
            dist.all_reduce(x, group=self._control)
        return x

    def gather_rows(self, x: torch.Tensor, full: int) -> torch.Tensor:
        rows, cols = x.shape
        x = x.contiguous()
        out = torch.empty((self.world * rows, cols), dtype=x.dtype, device=x.device)
        if self._nccl is not None:
            self._nccl.all_gather(out, x)
        else:
            dist.all_gather(list(out.chunk(self.world)), x, group=self._control)
        return out.view(self.world, rows, cols).permute(1, 0, 2).reshape(rows, self.world * cols)[:, :full]

    def agree_min(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self._control)
        return int(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self._control)


Parallel = SingleProcess  # the type every user of a group annotates with (TensorParallel is one)


def split(total: int, world: int, what: str) -> int:
    """``total / world``, refusing a split that is not even (heads, KV heads, intermediate columns)."""
    if total % world:
        raise ValueError(f"{what} ({total}) does not split evenly over {world} tensor-parallel ranks")
    return total // world


# ---- NCCL through ctypes (capturable in CUDA graphs) ------------------------------------------------------------

_NCCL_TYPES = {
    torch.int8: 0,
    torch.uint8: 1,
    torch.int32: 2,
    torch.int64: 4,
    torch.float16: 6,
    torch.float32: 7,
    torch.float64: 8,
    torch.bfloat16: 9,
}
_NCCL_SUM = 0


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]


def _load_nccl() -> ctypes.CDLL:
    """libnccl.so.2: the one torch loaded (found by its soname), else the nvidia-nccl wheel's."""
    names = [os.environ.get("HANBOT_NCCL_LIBRARY", ""), "libnccl.so.2", "libnccl.so"]
    for root in sys.path:
        names += glob.glob(os.path.join(root, "nvidia", "nccl*", "lib", "libnccl.so*"))
    errors = []
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    raise RuntimeError("NCCL library not found (set HANBOT_NCCL_LIBRARY): " + "; ".join(errors[:3]))


class NcclComm:
    """One NCCL communicator over the group's ranks; calls go on the current CUDA stream (so they are captured)."""

    def __init__(self, lib: ctypes.CDLL, comm: ctypes.c_void_p, device: torch.device) -> None:
        self._lib = lib
        self._comm = comm
        self.device = device
        lib.ncclGetErrorString.restype = ctypes.c_char_p

    @classmethod
    def create(cls, group: TensorParallel, device: torch.device) -> NcclComm:
        lib = _load_nccl()
        uid = _UniqueId()
        if group.rank == 0:
            cls._check(lib, lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        raw = group.broadcast_object(bytes(uid.internal) if group.rank == 0 else None)
        ctypes.memmove(ctypes.addressof(uid), raw, len(raw))
        comm = ctypes.c_void_p()
        with torch.cuda.device(device):
            cls._check(
                lib,
                lib.ncclCommInitRank(ctypes.byref(comm), group.world, uid, group.rank),
                "ncclCommInitRank",
            )
        made = cls(lib, comm, device)
        probe = torch.ones(1, device=device)
        made.all_reduce(probe)
        torch.cuda.synchronize(device)
        if int(probe.item()) != group.world:
            raise RuntimeError(f"NCCL all-reduce probe gave {probe.item()}, expected {group.world}")
        return made

    @staticmethod
    def _check(lib: ctypes.CDLL, code: int, what: str) -> None:
        if code != 0:
            lib.ncclGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"{what} failed: NCCL error {code} ({lib.ncclGetErrorString(code).decode()})")

    def _stream(self) -> ctypes.c_void_p:
        return ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)

    def all_reduce(self, x: torch.Tensor) -> None:
        """Sum ``x`` over the ranks, in place."""
        code = self._lib.ncclAllReduce(
            ctypes.c_void_p(x.data_ptr()),
            ctypes.c_void_p(x.data_ptr()),
            ctypes.c_size_t(x.numel()),
            _NCCL_TYPES[x.dtype],
            _NCCL_SUM,
            self._comm,
            self._stream(),
        )
        self._check(self._lib, code, "ncclAllReduce")

    def all_gather(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """``out`` = every rank's ``x`` one after the other (rank order)."""
        code = self._lib.ncclAllGather(
            ctypes.c_void_p(x.data_ptr()),
            ctypes.c_void_p(out.data_ptr()),
            ctypes.c_size_t(x.numel()),
            _NCCL_TYPES[x.dtype],
            self._comm,
            self._stream(),
        )
        self._check(self._lib, code, "ncclAllGather")


# ---- one-shot all-reduce over symmetric (peer) memory --------------------------------------------------------------


class SymmMemAllReduce:
    """Sums small tensors (a decode step's rows) with torch's one-shot symmetric-memory kernel: each GPU reads the
    others' copies over NVLink, a few microseconds where NCCL needs ten or more. Larger tensors (prefill) go to NCCL.
    Multicast stays off (TORCH_SYMM_MEM_DISABLE_MULTICAST=1 on shared machines): one-shot needs only peer access."""

    MAX_BYTES = 1 << 20  # 32 rows of 8192 bf16 values is 512 KiB

    def __init__(self, buffer: torch.Tensor, group_name: str) -> None:
        self.buffer = buffer
        self.group_name = group_name

    @classmethod
    def try_create(cls, group: TensorParallel, device: torch.device) -> SymmMemAllReduce | None:
        """Set it up and check it against NCCL on every rank; None (NCCL serves) when any rank cannot."""
        made: SymmMemAllReduce | None = None
        try:
            import torch.distributed._symmetric_memory as symm_mem

            name = dist.group.WORLD.group_name  # type: ignore[union-attr]
            buffer = symm_mem.empty(cls.MAX_BYTES // 2, dtype=torch.bfloat16, device=device)
            symm_mem.rendezvous(buffer, name)
            made = cls(buffer, name)
            probe = torch.full((4, 1024), float(group.rank + 1), dtype=torch.bfloat16, device=device)
            made.all_reduce(probe)
            torch.cuda.synchronize(device)
            want = float(sum(range(1, group.world + 1)))
            if not bool((probe == want).all()):
                raise RuntimeError(f"symmetric-memory all-reduce probe gave {probe[0, 0].item()}, not {want}")
        except Exception as exc:
            _log.warning("symmetric-memory all-reduce unavailable (%s): NCCL sums every tensor", exc)
            made = None
        if group.agree_min(1 if made else 0) == 0:
            return None
        return made

    def fits(self, x: torch.Tensor) -> bool:
        return x.dtype == self.buffer.dtype and x.numel() <= self.buffer.numel() and x.is_contiguous()

    def all_reduce(self, x: torch.Tensor) -> None:
        staged = self.buffer[: x.numel()]
        staged.copy_(x.view(-1))
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, x.view(-1))
