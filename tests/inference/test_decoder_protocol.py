"""The decoder seam is honest: every capability the worker and the engine use is a member of ``BatchDecoder``, both
decoders offer all of them, the tensor-parallel mirror writes each one out (no forwarding to rank 0 only), and the
``max_new_tokens`` the worker stops on (clipped to what the context leaves) is the one the decoder reserves for."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

from bot.domain import GenerationParams
from bot.settings import EngineSettings, GenerationSettings
from inference.decoder import BatchDecoder, DecoderDefaults, SlotRequest
from inference.fast import StaticSlotDecoder
from inference.fast.mirror import MIRRORED, MirroredDecoder, _replayed
from inference.hf_decoder import HFBatchDecoder
from inference.loading import LoadedModel
from inference.local_engine import LocalEngine
from tests.inference.engine_helpers import collect, request

ROOT = Path(__file__).resolve().parents[2]
QUERIES = {
    "capacity",
    "prefills_in_steps",
    "lora_slots",
    "model_intact",
    "can_admit",
    "can_admit_together",
    "take_prefill_failures",
}


def protocol_members() -> set[str]:
    return {
        name
        for name, value in vars(BatchDecoder).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


def attributes_used(path: Path, owner: str) -> set[str]:
    """The attributes read on ``<owner>`` (``decoder``, ``self._decoder``, ``old``...) anywhere in a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            target = ast.unparse(node.value)
            if target == owner or target.endswith(f".{owner}") or target.endswith(f"._{owner}"):
                names.add(node.attr)
    return names


def test_every_decoder_capability_the_worker_and_engine_use_is_declared() -> None:
    used = (
        attributes_used(ROOT / "inference/worker.py", "decoder")
        | attributes_used(ROOT / "inference/worker.py", "old")
        | attributes_used(ROOT / "inference/local_engine.py", "decoder")
    )
    assert "take_prefill_failures" in used and "close" in used  # the scan sees the calls
    assert used <= protocol_members(), used - protocol_members()
    for module in ("inference/worker.py", "inference/local_engine.py", "inference/fast/mirror.py"):
        probed = [
            ast.unparse(node)
            for node in ast.walk(ast.parse((ROOT / module).read_text()))
            if isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("getattr", "hasattr")
            and any(word in ast.unparse(node.args[0]) for word in ("decoder", "old", "inner"))
        ]
        assert not probed, (module, probed)  # capabilities are asked for, not probed


def test_both_decoders_offer_every_member() -> None:
    for cls in (HFBatchDecoder, StaticSlotDecoder, DecoderDefaults):
        missing = {m for m in protocol_members() if not hasattr(cls, m)}
        assert not missing or (cls is DecoderDefaults and missing <= {"capacity", "admit", "step", "release"})
    assert HFBatchDecoder.weights_changed is not DecoderDefaults.weights_changed  # it follows the model
    assert StaticSlotDecoder.submit is not DecoderDefaults.submit


def test_the_mirror_writes_out_every_member_and_mirrors_every_state_change() -> None:
    own = set(vars(MirroredDecoder))
    assert "__getattr__" not in own
    assert protocol_members() <= own, protocol_members() - own
    assert protocol_members() - QUERIES <= set(MIRRORED)
    assert set(inspect.signature(_replayed).parameters) == {"decoder"}
    replayed = ast.parse(inspect.getsource(_replayed))
    keys = {
        node.value
        for node in ast.walk(replayed)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert set(MIRRORED) <= keys  # a follower replays every call the leader sends
    for name in set(MIRRORED) - {"close"}:  # and the leader sends it before running it
        assert f'"{name}"' in inspect.getsource(getattr(MirroredDecoder, name)), name
    assert "_STOP" in inspect.getsource(MirroredDecoder.close)  # close: the followers close and return


class Recording(StaticSlotDecoder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted: list[SlotRequest] = []

    def submit(self, request: SlotRequest) -> None:
        self.submitted.append(request)
        super().submit(request)


async def test_the_decoder_reserves_for_the_clipped_max_new_tokens(demo_loaded: LoadedModel) -> None:
    """A slot holds 128 tokens; the prompt leaves ``room`` of them: asking for 256 new tokens is clipped to ``room``
    for the worker and the decoder alike (before, the decoder reserved prompt + 256 and refused the request)."""
    decoders: list[Recording] = []

    def factory(model: Any, settings: EngineSettings) -> BatchDecoder:
        decoders.append(Recording(model, capacity=2, block_size=16, max_context=128, prefix_cache=False))
        return decoders[-1]

    engine = LocalEngine(
        demo_loaded.model,
        demo_loaded.tokenizer,
        engine=EngineSettings(decoder="static", max_batch_size=2),
        generation=GenerationSettings(timeout_s=120),
        context_length=128,
        decoder_factory=factory,
    )
    req = request("What is hanbot?", params=GenerationParams(max_new_tokens=256, do_sample=False))
    room = 128 - len(engine.tokenizer.encode(req.turns))
    try:
        reply = await collect(engine, req)
    finally:
        await engine.aclose()
    assert 0 < room < 256
    assert reply.error is None and reply.text
    [seen] = decoders[0].submitted
    assert seen.params.max_new_tokens == room
    assert len(seen.prompt_ids) + seen.params.max_new_tokens <= decoders[0].max_request_tokens
