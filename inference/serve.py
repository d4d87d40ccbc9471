"""``python -m inference serve``: the local engine behind an OpenAI-compatible HTTP API (``inference.engine_server``).

    python -m inference serve --port 8000                                   # one GPU (or the CPU)
    torchrun --nproc-per-node 2 -m inference serve --port 8000              # HANBOT_ENGINE__TENSOR_PARALLEL=2

It reads the same settings as the bot (``model.*``, ``engine.*``, ``generation.*``): the fast decoder, FP8, the
LoRA pool, prefix reuse. Bots use it with ``HANBOT_ENGINE__KIND=remote`` and
``HANBOT_ENGINE__REMOTE_BASE_URL=http://HOST:8000/v1``; several bot processes share it, and a bot restart or upgrade
does not reload the weights. Under torchrun (tensor parallel) rank 0 serves HTTP and the other ranks follow its
decoder calls until it stops; this is the only place tensor parallelism starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from bot.errors import ConfigError, ModelLoadError
from bot.import_names import check_import_names
from bot.masking import mask_text
from bot.ops.logs import setup_logging
from bot.settings import Settings, load_settings
from inference.engine_server import EngineServer, serve_forever
from inference.local_engine import LocalEngine

_log = logging.getLogger(__name__)
EXIT_CONFIG = 78  # as the bot's: the settings or the model are wrong


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, "text")
    try:
        check_import_names()
        return _serve(args)
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description="hanbot's inference engine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve the local engine over an OpenAI-compatible HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000; 0 picks a free port")
    serve.add_argument(
        "--served-model-name", help="the base model's name in the API; default: model.name_or_path"
    )
    serve.add_argument(
        "--demo", action="store_true", help="serve the tiny demo model (built here on first use)"
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.demo:
        from inference.demo_model import demo_overrides

        settings = load_settings(**demo_overrides(settings.data_dir))
    if settings.engine.tensor_parallel > 1 and int(os.environ.get("RANK", "0")) != 0:
        from inference.tensor_parallel import follower_main

        return follower_main(settings)
    engine = build_engine(settings)
    server = EngineServer(
        engine,
        model_name=args.served_model_name or settings.engine.remote_model or settings.model.name_or_path,
        defaults=settings.generation.params(),  # what a request leaves out
        host=args.host,
        port=args.port,
        api_key=os.environ.get("HANBOT_ENGINE_API_KEY"),
    )
    asyncio.run(_run(server))
    return 0


def build_engine(settings: Settings) -> LocalEngine:
    """The local engine; rank 0's over the tensor-parallel decoder under torchrun."""
    if settings.engine.tensor_parallel > 1:
        from inference.tensor_parallel import leader_engine

        return leader_engine(settings)
    return LocalEngine.from_settings(settings)


async def _run(server: EngineServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await serve_forever(server, stop)
    _log.info("engine server stopped")
