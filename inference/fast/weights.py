"""The Llama-architecture weights the fast decoder reads, taken from a transformers model without copying.

Q/K/V and gate/up projections are fused into one matrix each (one matrix-vector product instead of three or
two), one layer at a time; the transformers modules are re-pointed at views of the fused tensors, so the model
itself keeps working and no second copy of the weights stays in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

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


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden]
    o: torch.Tensor  # [hidden, heads * head_dim]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]


@dataclass
class LlamaWeights:
    spec: LlamaSpec
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor  # [vocab, hidden]
    inv_freq: (
        torch.Tensor
    )  # [head_dim / 2], float32, Llama-3 scaling already applied by the config's rope type
    attention_scaling: float

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype


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
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModel(f"activation {act!r} is not supported by the fast decoder")
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


def rope_tables(weights: LlamaWeights, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions [0, max_positions), half head-dim wide, in the model dtype (as transformers does)."""
    pos = torch.arange(max_positions, device=weights.device, dtype=torch.float32)
    freqs = pos[:, None] * weights.inv_freq[None, :]
    cos = (freqs.cos() * weights.attention_scaling).to(weights.dtype).contiguous()
    sin = (freqs.sin() * weights.attention_scaling).to(weights.dtype).contiguous()
    return cos, sin
