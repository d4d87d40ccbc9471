"""The core's commands as Discord slash commands (app_commands), with help text and choices.

Each interaction is deferred first (``defer(thinking=True, ephemeral=True)``: Discord drops an interaction not
answered within 3 s), then the core runs the command, which checks admin rights itself, and the answer comes as a
followup. Admin-only commands are hidden in Discord's UI from members without Manage Server, unless the settings name
extra admin users or roles (they would not see the command otherwise); the core's check applies either way.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from adapters.discord.events import author_of, conversation_key, lang_of_locale
from adapters.discord.sink import MESSAGE_LIMIT, WRITE_ERRORS
from bot.commands import CommandContext, CommandOption, CommandRegistry, CommandSpec
from bot.ports import ConversationHistory
from bot.settings import DiscordSettings
from bot.textsplit import split_message, utf16_size

_log = logging.getLogger(__name__)

DESCRIPTION_LIMIT = 100


def build_tree(
    client: discord.Client,
    registry: CommandRegistry,
    settings: DiscordSettings,
    *,
    history: ConversationHistory | None = None,
) -> app_commands.CommandTree:
    tree: app_commands.CommandTree = app_commands.CommandTree(client)
    hide_admin_commands = not (settings.admin_user_ids or settings.admin_role_ids)
    for spec in registry.specs():
        tree.add_command(
            slash_command(spec, registry, hide_admin_commands=hide_admin_commands, history=history)
        )
    return tree


async def sync_tree(tree: app_commands.CommandTree, settings: DiscordSettings) -> None:
    """Publish the commands: globally, and at once to the guilds listed in ``sync_guild_ids``."""
    try:
        synced = await tree.sync()
        _log.info("synced %d global slash commands", len(synced))
        for guild_id in settings.sync_guild_ids:
            guild = discord.Object(id=int(guild_id))
            tree.copy_global_to(guild=guild)
            synced = await tree.sync(guild=guild)
            _log.info("synced %d slash commands to guild=%s", len(synced), guild_id)
    except WRITE_ERRORS as exc:
        _log.error("could not sync slash commands (they may be stale): %s", exc)


def slash_command(
    spec: CommandSpec,
    registry: CommandRegistry,
    *,
    hide_admin_commands: bool,
    history: ConversationHistory | None = None,
) -> app_commands.Command[Any, ..., None]:
    async def callback(interaction: discord.Interaction, **options: str | None) -> None:
        await answer(interaction, spec.name, options, registry, history=history)

    callback.__signature__ = _signature(spec.options)  # type: ignore[attr-defined]
    callback.__discord_app_commands_param_description__ = {  # type: ignore[attr-defined]
        o.name: o.description[:DESCRIPTION_LIMIT] for o in spec.options
    }
    callback.__discord_app_commands_param_choices__ = {  # type: ignore[attr-defined]
        o.name: [app_commands.Choice(name=c, value=c) for c in o.choices] for o in spec.options if o.choices
    }
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name=spec.name, description=spec.description[:DESCRIPTION_LIMIT], callback=callback
    )
    if spec.admin_only and hide_admin_commands:
        command.default_permissions = discord.Permissions(manage_guild=True)
    return command


def _signature(options: tuple[CommandOption, ...]) -> inspect.Signature:
    params = [
        inspect.Parameter(
            "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
        )
    ]
    for option in options:
        params.append(
            inspect.Parameter(
                option.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=str if option.required else str | None,
                default=inspect.Parameter.empty if option.required else None,
            )
        )
    return inspect.Signature(params)


async def answer(
    interaction: discord.Interaction,
    name: str,
    options: Mapping[str, str | None],
    registry: CommandRegistry,
    *,
    history: ConversationHistory | None = None,
) -> None:
    """Defer at once, run the command in the core, send its reply as followups."""
    ids = f"interaction={interaction.id} channel={interaction.channel_id} user={interaction.user.id}"
    try:
        await interaction.response.defer(thinking=True, ephemeral=True)
    except WRITE_ERRORS as exc:
        _log.warning("could not defer /%s %s: %s", name, ids, exc)
        return
    in_guild = interaction.guild_id is not None
    ctx = CommandContext(
        platform="discord",
        conversation=conversation_key(interaction.guild_id, interaction.channel_id or 0),
        invoker=author_of(interaction.user, manage_guild=in_guild and interaction.permissions.manage_guild),
        args={k: v for k, v in options.items() if v is not None},
        lang=lang_of_locale(interaction.locale),
        history=history,
    )
    reply = await registry.run(name, ctx)
    for piece in split_message(reply.text, MESSAGE_LIMIT, size=utf16_size):
        try:
            await interaction.followup.send(piece, ephemeral=reply.ephemeral)
        except WRITE_ERRORS as exc:
            _log.error("could not answer /%s %s: %s", name, ids, exc)
            return
