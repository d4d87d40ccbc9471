"""Static KV slots and CUDA graphs for Llama-architecture models: the fast BatchDecoder (see decoder.py).

``StaticSlotDecoder(model, capacity=..., cache_dir=...)`` takes a loaded transformers Llama model (weights on one
device) and serves the ``inference.decoder.BatchDecoder`` contract. On CUDA it uses Triton kernels and one CUDA
graph per bucketed batch size; on CPU it runs the same code eagerly with plain torch operations.
"""

from inference.fast.decoder import StaticSlotDecoder, default_buckets, use_cache_dir
from inference.fast.weights import UnsupportedModel

__all__ = ["StaticSlotDecoder", "UnsupportedModel", "default_buckets", "use_cache_dir"]
