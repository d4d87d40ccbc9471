"""The Llama-architecture weights the fast decoder reads.

From a transformers model on one device (``extract_weights``): Q/K/V and gate/up projections are fused into one
matrix each (one matrix-vector product instead of three or two), one layer at a time; the transformers modules are
re-pointed at views of the fused tensors, so the model itself keeps working and no second copy stays in memory.

Two variants build new tensors layer by layer instead (``build_weights``, from any source of named tensors: a
transformers model, safetensors files, random values for benchmarks):
- FP8 (weight-only): each matrix is quantised as soon as it is built, and the bf16 source can be released, so a
  70B checkpoint in bf16 becomes ~70 GB of FP8 on one GPU without ever needing both at once.
- Tensor parallel: each rank keeps its slice (``parallel.py`` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Union

import torch

from inference.fast.parallel import split

if TYPE_CHECKING:
    from inference.fast.fp8 import Fp8Weight

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def for_rank(self, world: int) -> LlamaSpec:
        """The spec of one tensor-parallel rank's slice: its heads, KV heads and intermediate columns (the
        vocabulary stays whole: that is the size of the logits every rank gathers)."""
        if world == 1:
            return self
        return replace(
            self,
            num_heads=split(self.num_heads, world, "attention heads"),
            num_kv_heads=split(self.num_kv_heads, world, "key-value heads"),
            intermediate_size=split(self.intermediate_size, world, "MLP intermediate size"),
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V over all layers for one token, in bytes (2-byte elements)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * 2

    @classmethod
    def from_config(cls, config: Any) -> LlamaSpec:
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            vocab_size=int(config.vocab_size),
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(config.rms_norm_eps),
            max_positions=int(config.max_position_embeddings),
        )


Matrix = Union[torch.Tensor, "Fp8Weight"]


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: Matrix  # [(heads + 2 * kv_heads) * head_dim, hidden]
    o: Matrix  # [hidden, heads * head_dim]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Matrix  # [2 * intermediate, hidden]
    down: Matrix  # [hidden, intermediate]


@dataclass
class LlamaWeights:
    spec: LlamaSpec
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: Matrix  # [vocab, hidden]; a tensor-parallel rank's rows, padded to an even split
    inv_freq: (
        torch.Tensor
    )  # [head_dim / 2], float32, Llama-3 scaling already applied by the config's rope type
    attention_scaling: float

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the embedding's; FP8 matrices are dequantised into it)."""
        return self.embed.dtype

    def matrices(self) -> list[Matrix]:
        return [m for lw in self.layers for m in (lw.qkv, lw.o, lw.gate_up, lw.down)] + [self.lm_head]

    def matrix_bytes(self) -> int:
        """Bytes of the matrices a decode step reads (what bounds its speed)."""
        return sum(_nbytes(m) for m in self.matrices())


def _nbytes(m: Matrix) -> int:
    if isinstance(m, torch.Tensor):
        return m.numel() * m.element_size()
    return m.nbytes()


class UnsupportedModel(ValueError):
    """The model is not a plain Llama-architecture causal LM the fast decoder can drive."""


def _fuse(owner: Any, key: str, linears: list[Any]) -> torch.Tensor:
    """Concatenate the linears' weights and re-point each module at its slice (no second copy stays)."""
    cached = getattr(owner, key, None)
    if isinstance(cached, torch.Tensor) and cached.data_ptr() == linears[0].weight.data_ptr():
        return cached  # fused by an earlier decoder over the same model
    for lin in linears:
        if getattr(lin, "bias", None) is not None:
            raise UnsupportedModel("projection biases are not supported by the fast decoder")
    fused = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight.data = fused[start : start + n]
        start += n
    setattr(owner, key, fused)
    return fused


def extract_weights(model: Any) -> LlamaWeights:
    """Read (and fuse in place) the weights of a transformers ``LlamaForCausalLM``-shaped model."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(model, "lm_head"):
        raise UnsupportedModel(f"{type(model).__name__} is not a Llama-architecture causal LM")
    config = model.config
    check_architecture(config)
    spec = LlamaSpec.from_config(config)
    device = inner.embed_tokens.weight.device
    if device.type == "meta":
        raise UnsupportedModel("the model's weights are still on the meta device")
    out_layers: list[LayerWeights] = []
    with torch.no_grad():
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            for p in layer.parameters():
                if p.device != device:
                    raise UnsupportedModel(
                        "the fast decoder needs every weight on one device (no offload/split)"
                    )
            qkv = _fuse(attn, "_hanbot_fused_qkv", [attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = _fuse(mlp, "_hanbot_fused_gate_up", [mlp.gate_proj, mlp.up_proj])
            out_layers.append(
                LayerWeights(
                    input_norm=layer.input_layernorm.weight.detach(),
                    qkv=qkv,
                    o=attn.o_proj.weight.detach(),
                    post_norm=layer.post_attention_layernorm.weight.detach(),
                    gate_up=gate_up,
                    down=mlp.down_proj.weight.detach(),
                )
            )
    rotary = inner.rotary_emb
    inv_freq = rotary.inv_freq.detach().to(device=device, dtype=torch.float32)
    if getattr(rotary, "rope_type", "default") not in ("default", "llama3", "linear"):
        raise UnsupportedModel(f"rope type {rotary.rope_type!r} (dynamic scaling) is not supported")
    _log.info(
        "fast decoder weights: %d layers, %s on %s", spec.num_layers, inner.embed_tokens.weight.dtype, device
    )
    return LlamaWeights(
        spec=spec,
        embed=inner.embed_tokens.weight.detach(),
        layers=out_layers,
        norm=inner.norm.weight.detach(),
        lm_head=model.lm_head.weight.detach(),
        inv_freq=inv_freq,
        attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
    )


Fetch = Callable[[str, int | None, slice | None], torch.Tensor]
"""(parameter name as in a transformers state dict, the dimension to slice or None, the slice) → that tensor."""


@dataclass(frozen=True)
class RankSlices:
    """The rows (or columns) of each weight matrix that one tensor-parallel rank keeps."""

    q: slice  # rows of q_proj, columns of o_proj: this rank's attention heads
    kv: slice  # rows of k_proj and v_proj: its key-value heads
    ff: slice  # rows of gate_proj and up_proj, columns of down_proj
    vocab: slice  # rows of lm_head (the last rank's may run past the vocabulary: padded with zeros)

    @classmethod
    def of(cls, spec: LlamaSpec, rank: int, world: int) -> RankSlices:
        local = spec.for_rank(world)
        q = local.num_heads * spec.head_dim
        kv = local.num_kv_heads * spec.head_dim
        ff = local.intermediate_size
        vocab = -(-spec.vocab_size // world)
        return cls(
            q=slice(rank * q, (rank + 1) * q),
            kv=slice(rank * kv, (rank + 1) * kv),
            ff=slice(rank * ff, (rank + 1) * ff),
            vocab=slice(rank * vocab, (rank + 1) * vocab),
        )


def build_weights(
    config: Any,
    fetch: Fetch,
    *,
    device: torch.device,
    dtype: torch.dtype,
    rank: int = 0,
    world: int = 1,
    fp8: bool = False,
    release: Callable[[int], None] | None = None,
) -> LlamaWeights:
    """New fused (and sliced, and quantised) tensors on ``device``, one layer at a time.

    ``fetch`` supplies each named tensor (or the slice of it this rank keeps); ``release(i)`` is called once
    layer ``i`` is built, so a caller can free its source (an FP8 build from a bf16 model on a full GPU)."""
    check_architecture(config)
    full = LlamaSpec.from_config(config)
    spec = full.for_rank(world)
    cut = RankSlices.of(full, rank, world)
    if fp8:
        from inference.fast.fp8 import quantize_fp8

    def take(name: str, dim: int | None = None, part: slice | None = None) -> torch.Tensor:
        return fetch(name, dim, part).to(device=device, dtype=dtype)

    def matrix(t: torch.Tensor) -> Matrix:
        return quantize_fp8(t) if fp8 else t.contiguous()

    layers: list[LayerWeights] = []
    with torch.no_grad():
        for i in range(full.num_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat(
                [
                    take(p + "self_attn.q_proj.weight", 0, cut.q),
                    take(p + "self_attn.k_proj.weight", 0, cut.kv),
                    take(p + "self_attn.v_proj.weight", 0, cut.kv),
                ]
            )
            gate_up = torch.cat(
                [take(p + "mlp.gate_proj.weight", 0, cut.ff), take(p + "mlp.up_proj.weight", 0, cut.ff)]
            )
            layers.append(
                LayerWeights(
                    input_norm=take(p + "input_layernorm.weight"),
                    qkv=matrix(qkv),
                    o=matrix(take(p + "self_attn.o_proj.weight", 1, cut.q)),
                    post_norm=take(p + "post_attention_layernorm.weight"),
                    gate_up=matrix(gate_up),
                    down=matrix(take(p + "mlp.down_proj.weight", 1, cut.ff)),
                )
            )
            del qkv, gate_up
            if release is not None:
                release(i)
        head_name = (
            "model.embed_tokens.weight" if getattr(config, "tie_word_embeddings", False) else "lm_head.weight"
        )
        rows = slice(cut.vocab.start, min(cut.vocab.stop, full.vocab_size))
        head = take(head_name, 0, rows)
        if head.shape[0] < cut.vocab.stop - cut.vocab.start:  # the last rank's rows, padded to an even split
            pad = cut.vocab.stop - cut.vocab.start - head.shape[0]
            head = torch.cat([head, head.new_zeros((pad, head.shape[1]))])
        lm_head = matrix(head)
        del head
        if release is not None:
            release(full.num_layers)
        inv_freq, scaling = rope_of(config, device)
        weights = LlamaWeights(
            spec=spec,
            embed=take("model.embed_tokens.weight"),
            layers=layers,
            norm=take("model.norm.weight"),
            lm_head=lm_head,
            inv_freq=inv_freq,
            attention_scaling=scaling,
        )
    _log.info(
        "fast decoder weights built: %d layers%s, rank %d of %d, %.2f GB of matrices on %s",
        full.num_layers,
        " in FP8" if fp8 else "",
        rank,
        world,
        weights.matrix_bytes() / 1e9,
        device,
    )
    return weights


def fetch_from_model(model: Any) -> Fetch:
    """Read named tensors (slices) of a loaded transformers model."""

    def fetch(name: str, dim: int | None, part: slice | None) -> torch.Tensor:
        t = model.get_parameter(name).detach()
        if t.device.type == "meta":
            raise UnsupportedModel(f"{name} is still on the meta device")
        if dim is None or part is None:
            return t
        return t[part] if dim == 0 else t[:, part]

    return fetch


def release_layer_weights(model: Any) -> Callable[[int], None]:
    """``release`` for build_weights: drop a transformers model's copy of layer i (or of the head, past the last
    layer), so its memory goes to the new tensors. The model cannot run a forward afterwards."""
    layers = model.model.layers

    def release(i: int) -> None:
        modules = (
            [model.lm_head]
            if i >= len(layers)
            else [m for m in layers[i].modules() if isinstance(m, torch.nn.Linear)]
        )
        for lin in modules:
            lin.weight.data = torch.empty(0, dtype=lin.weight.dtype, device=lin.weight.device)

    return release


def check_architecture(config: Any) -> None:
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModel(f"activation {act!r} is not supported by the fast decoder")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise UnsupportedModel("projection biases are not supported by the fast decoder")


def rope_of(config: Any, device: torch.device) -> tuple[torch.Tensor, float]:
    """inv_freq (float32, the config's rope scaling applied) and the attention scaling, as transformers computes
    them for this config."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(config)
    if getattr(rotary, "rope_type", "default") not in ("default", "llama3", "linear"):
        raise UnsupportedModel(f"rope type {rotary.rope_type!r} (dynamic scaling) is not supported")
    inv_freq = rotary.inv_freq.detach().to(device=device, dtype=torch.float32)
    return inv_freq, float(getattr(rotary, "attention_scaling", 1.0))


def rope_tables(weights: LlamaWeights, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions [0, max_positions), half head-dim wide, in the model dtype (as transformers does)."""
    pos = torch.arange(max_positions, device=weights.device, dtype=torch.float32)
    freqs = pos[:, None] * weights.inv_freq[None, :]
    cos = (freqs.cos() * weights.attention_scaling).to(weights.dtype).contiguous()
    sin = (freqs.sin() * weights.attention_scaling).to(weights.dtype).contiguous()
    return cos, sin
