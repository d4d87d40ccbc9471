"""Command line: `python -m bot <command>` (or `hanbot <command>`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.errors import ConfigError, ModelLoadError
from bot.import_names import check_import_names
from bot.masking import mask_text, mask_url
from bot.ops.logs import setup_logging
from bot.settings import Settings, load_settings

_log = logging.getLogger(__name__)

DEMO_ANNOUNCEMENT = (
    "[데모 모델] 이 저장소에서 학습한 아주 작은 모델입니다 (Bllossom 70B가 아님). FAQ 밖의 질문에는 엉뚱하게 답해요.\n"
    "[demo model] a tiny model trained here on the bundled FAQ, NOT Bllossom 70B: "
    "questions outside the FAQ get nonsense.\n"
    "종료: `종료` / `exit` / Ctrl-D · commands: /help /reset"
)


# exit codes, for service managers (docs/operations.md; the systemd unit does not restart on 2 and 78)
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected error (a traceback is logged): restarting may help
EXIT_USAGE = 2  # the command line is wrong (argparse's own code)
EXIT_CONFIG = (
    78  # the settings, a token or the model are wrong (sysexits EX_CONFIG): fix them, then start again
)
EXIT_INTERRUPTED = (
    130  # Ctrl-C (SIGINT) before the bot was serving; SIGTERM/SIGINT while serving is a clean 0
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits with EXIT_USAGE on a bad command line
    _setup_logging(args.log_level or ("WARNING" if args.command == "chat" else None))
    try:
        check_import_names()  # another package named adapters or inference: say what to do, before importing it
        return int(args.run(args) or EXIT_OK)
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {mask_text(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hanbot",
        description="A Korean-English team chatbot (Discord, Slack, console) on a self-hosted LLM.",
        epilog=(
            f"exit codes: {EXIT_OK} done, {EXIT_CRASH} unexpected error, {EXIT_USAGE} usage error, "
            f"{EXIT_CONFIG} configuration error (settings, tokens, model), {EXIT_INTERRUPTED} interrupted"
        ),
    )
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: settings"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = sub.add_parser("chat", help="chat in this terminal (the prototype's loop on the real core)")
    chat.add_argument("--demo", action="store_true", help="use the tiny demo model (built here on first use)")
    chat.add_argument("--session", default="console", help="conversation name; history is kept per name")
    chat.set_defaults(run=_run_chat)

    serve = sub.add_parser("serve", help="run the Discord and/or Slack bots (those whose tokens are set)")
    serve.add_argument("--platform", action="append", choices=["discord", "slack"], help="repeatable")
    serve.set_defaults(run=_run_serve)
    for platform in ("discord", "slack"):
        only = sub.add_parser(platform, help=f"run only the {platform.capitalize()} bot")
        only.set_defaults(run=_run_serve, platform=[platform])

    demo = sub.add_parser("build-demo-model", help="build (or rebuild) the tiny demo model")
    demo.add_argument("--out", type=Path, help="default: <data_dir>/demo-model")
    demo.set_defaults(run=_run_build_demo)

    migrate = sub.add_parser(
        "migrate", help="bring the database schema up to date (also done at every start)"
    )
    migrate.set_defaults(run=_run_migrate)

    check = sub.add_parser("check-config", help="validate the settings and print them (secrets hidden)")
    check.set_defaults(run=_run_check_config)
    return parser


def _setup_logging(level: str | None) -> None:
    settings_level, settings_format = "INFO", "text"
    try:
        settings = Settings()
        settings_level, settings_format = settings.log_level, settings.log_format
    except Exception:  # invalid settings are reported by the command itself
        pass
    setup_logging(level or settings_level, settings_format)


def _run_chat(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # loading bars would interleave with the chat
    from bot.app import (
        announce_runs,
        build_console,
        build_core,
        demo_overrides,
        readiness_checks,
        recover,
        shutdown,
        start_background,
        start_ops,
        stop_on_sigterm,
    )
    from bot.ops.prometheus import PrometheusMetrics

    settings = load_settings()
    if args.demo:
        settings = load_settings(**demo_overrides(settings.data_dir))
    if args.demo:
        print(DEMO_ANNOUNCEMENT, flush=True)
    else:
        print(f"[model] {settings.model.name_or_path}", flush=True)

    async def chat() -> None:
        metrics = PrometheusMetrics()
        ops = await start_ops(settings, metrics, required=False)
        core = build_core(settings, metrics=metrics)
        console = build_console(args.session)
        stop_on_sigterm(console.stop)
        try:
            announce_runs(core, [console])
            await start_background(core)
            await recover(core, [console])
            await console.start(core.chat.handle, core.commands)
            if ops is not None:
                ops.watch(readiness_checks(core.store, core.engine, [console]))
            await console.wait_closed()
        finally:
            await shutdown(core, [console], ops)

    asyncio.run(chat())
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from bot.app import build_adapters, build_core, build_store, serve, start_ops
    from bot.ops.prometheus import PrometheusMetrics

    settings = load_settings()
    platforms = args.platform or _configured_platforms(settings)
    if not platforms:
        raise ConfigError(
            "no platform to serve: set DISCORD_TOKEN for Discord, or SLACK_BOT_TOKEN with SLACK_APP_TOKEN "
            "(Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode) for Slack"
        )

    async def run() -> None:
        metrics = PrometheusMetrics()
        ops = await start_ops(settings, metrics)  # /health answers while the model loads
        try:
            store = build_store(settings)
            adapters = build_adapters(settings, store, platforms, metrics)
            core = build_core(settings, store=store, metrics=metrics)
        except BaseException:
            if ops is not None:
                await ops.stop()
            raise
        await serve(core, adapters, ops)

    asyncio.run(run())
    return 0


def _configured_platforms(settings: Settings) -> list[str]:
    platforms = []
    if settings.discord_token:
        platforms.append("discord")
    if settings.slack_bot_token:
        platforms.append("slack")
    return platforms


def _run_build_demo(args: argparse.Namespace) -> int:
    from bot.app import build_demo_model

    settings = load_settings()
    out = build_demo_model(args.out or settings.data_dir / "demo-model")
    print(f"demo model saved to {out}")
    return 0


def _run_migrate(args: argparse.Namespace) -> int:
    from bot.app import build_store

    settings = load_settings()
    build_store(settings)
    print(f"database up to date: {mask_url(settings.database_url)}")
    return 0


def _run_check_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    shown = settings.model_dump(mode="json")  # SecretStr values come out as '**********'
    if settings.store.database_url:
        shown["store"]["database_url"] = mask_url(settings.store.database_url)
    if settings.engine.remote_base_url:
        shown["engine"]["remote_base_url"] = mask_url(settings.engine.remote_base_url)
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0
