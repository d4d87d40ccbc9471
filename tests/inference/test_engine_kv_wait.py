"""A request the KV memory cannot hold yet waits; it is not failed (issue: "a request that cannot fit waits").

The static decoder reserves each request's KV blocks when it is admitted. The engine may take several waiting
requests in one round; they must fit together, not each alone, or the last ones fail at admission. Here the KV
pool holds about two requests at once and four arrive together in four channels: all four are answered, at most
two run at a time, and the answers are the ones each gets alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.settings import EngineSettings, GenerationSettings
from inference.decoder import BatchDecoder
from inference.fast import StaticSlotDecoder
from inference.fast.weights import LlamaSpec
from inference.loading import LoadedModel
from inference.local_engine import LocalEngine
from tests.inference.engine_helpers import collect, request

QUESTIONS = ["What is hanbot?", "What does /reset do?", "안녕하세요", "Hello"]


async def test_requests_beyond_the_kv_memory_wait_instead_of_failing(demo_loaded: LoadedModel) -> None:
    decoders: list[StaticSlotDecoder] = []

    def factory(model: Any, settings: EngineSettings) -> BatchDecoder:
        # 16-token blocks: each request (~90 prompt + 64 new tokens) needs 10; the pool has 20 and the spare one
        per_block = LlamaSpec.from_config(model.config).kv_bytes_per_token * 16
        decoder = StaticSlotDecoder(
            model, capacity=4, block_size=16, max_context=512, kv_budget_bytes=per_block * 21
        )
        decoders.append(decoder)
        return decoder

    engine = LocalEngine(
        demo_loaded.model,
        demo_loaded.tokenizer,
        engine=EngineSettings(decoder="static", max_batch_size=4),
        generation=GenerationSettings(timeout_s=120),
        decoder_factory=factory,
    )
    try:
        alone = [
            await collect(engine, request(q, channel=f"solo-{i}", request_id=f"s{i}"))
            for i, q in enumerate(QUESTIONS)
        ]
        together = await asyncio.gather(
            *(
                collect(engine, request(q, channel=f"c{i}", request_id=f"t{i}"))
                for i, q in enumerate(QUESTIONS)
            )
        )
    finally:
        await engine.aclose()
    assert [r.error for r in together] == [None] * 4
    assert [r.text for r in together] == [r.text for r in alone]
    assert engine.stats.max_active == 2  # two waited for memory, not for a slot
    assert decoders[0].pool.num_blocks == 21
