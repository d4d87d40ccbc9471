"""Typed settings, validated once at start.

Sources, strongest first: keyword arguments, environment variables (``HANBOT_`` prefix, ``__`` between levels,
e.g. ``HANBOT_MODEL__NAME_OR_PATH``), a ``.env`` file, a TOML file (``HANBOT_CONFIG`` or ``./hanbot.toml``).
Secrets (tokens, signing secrets, API keys) are read from the environment only, under their usual names, and are
refused in the TOML file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bot.domain import GenerationParams
from bot.errors import ConfigError

_log = logging.getLogger(__name__)

DEFAULT_MODEL = "Bllossom/llama-3-Korean-Bllossom-70B"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful AI assistant. Please answer the user's questions kindly. "
    "당신은 유능한 AI 어시스턴트 입니다. 사용자의 질문에 대해 친절하게 답변해주세요."
)
# finetune.version_routes: "platform:workspace[:channel[:thread]]" (str(ConversationKey) or a prefix of it) -> "vN"
ROUTE_SCOPE = re.compile(r"(discord|slack|console):[^:\s]+(:[^:\s]+){0,2}")
ROUTE_VERSION = re.compile(r"v[0-9]+|base")
TENANT_ID = re.compile(r"(discord|slack):[^:\s]+")  # a team: a Discord guild or a Slack workspace
SECRET_FIELDS = (
    "discord_token",
    "slack_bot_token",
    "slack_app_token",
    "slack_signing_secret",
    "remote_api_key",
)


class ModelSettings(BaseModel):
    name_or_path: str = Field(DEFAULT_MODEL, description="Hub id or local folder of a causal LM")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to load")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("bfloat16", description="weights dtype")
    device_map: str | None = Field("auto", description='"auto", "cpu", "cuda:0", ... or empty for no map')
    max_memory: dict[str, str] | None = Field(None, description='per-device caps, e.g. {"0": "130GiB"}')
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="8bit/4bit: bitsandbytes (needs CUDA); for FP8 see engine.fp8_weights"
    )
    context_length: int | None = Field(
        None, ge=64, description="default: the model's max_position_embeddings"
    )
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="the prototype's bilingual prompt")
    is_demo: bool = Field(False, description="set by `hanbot chat --demo`: announced at start")
    progress_bar: Literal["auto", "on", "off"] = Field(
        "auto",
        description="a progress bar of the download and loading on stderr (auto: when it is a terminal); "
        "the logs get a status line every 10 s either way",
    )


_GENERATION_DEFAULTS = GenerationParams()  # the one definition of the defaults: bot.domain.GenerationParams


class GenerationSettings(BaseModel):
    max_new_tokens: int = Field(
        _GENERATION_DEFAULTS.max_new_tokens, ge=1, le=8192, description="longest reply, in tokens"
    )
    temperature: float = Field(_GENERATION_DEFAULTS.temperature, ge=0.0, le=5.0, description="0 means greedy")
    top_p: float = Field(_GENERATION_DEFAULTS.top_p, gt=0.0, le=1.0, description="nucleus sampling")
    repetition_penalty: float = Field(
        _GENERATION_DEFAULTS.repetition_penalty, ge=1.0, le=3.0, description="1.0 turns it off"
    )
    timeout_s: float = Field(300.0, gt=0, description="a reply still running after this is stopped")

    def params(self) -> GenerationParams:
        """What a request asks the engine for (a temperature of 0 decodes greedily)."""
        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            do_sample=self.temperature > 0,
        )


class ChatSettings(BaseModel):
    recovery_window_min: int = Field(
        10,
        ge=0,
        description="at start, messages left unanswered this recently get a reply or a notice; 0: off",
    )
    recovery: Literal["notice", "answer"] = Field(
        "notice", description="notice: one sentence saying the bot restarted; answer: answer them"
    )
    max_file_bytes: int = Field(
        16_000,
        ge=0,
        description="text files shared with a message (Discord, Slack) up to this size reach the prompt; 0: none",
    )


class EngineSettings(BaseModel):
    kind: Literal["local", "remote"] = Field(
        "local", description="local: transformers in this process; remote: OpenAI-compatible server"
    )
    # "auto": static KV slots + CUDA graphs on a GPU, the generic batched decoder elsewhere
    decoder: Literal["auto", "hf", "static"] = Field(
        "auto", description="static: KV slots + CUDA graphs; hf: generic batched"
    )
    cache_dir: str | None = Field(
        None, description="compiled kernels and plans of the static decoder; default <data_dir>/cache/fast"
    )
    fp8_weights: bool = Field(
        False,
        description="static decoder: weights in FP8 (weight-only, from the bf16 checkpoint; Hopper GPU)",
    )
    tensor_parallel: int = Field(
        1,
        ge=1,
        le=8,
        description="GPUs the model is split over: the engine server only (torchrun --nproc-per-node N -m inference serve)",
    )
    interleave_prefill: bool = Field(
        True,
        description="static decoder: prefill newcomers in chunks between decode steps, running replies keep streaming",
    )
    fp8_kv_cache: bool = Field(
        False,
        description="static decoder: KV cache in FP8 e4m3 with per-token scales (about twice the tokens; Hopper GPU)",
    )
    prefix_cache: bool = Field(
        True,
        description="static decoder: keep finished requests' KV blocks and reuse them for prompts that start the same",
    )
    lora_slots: int = Field(
        2,
        ge=0,
        le=64,
        description="static decoder: LoRA versions served at once (a GPU pool; 0: base model only)",
    )
    lora_max_rank: int = Field(
        16, ge=1, le=256, description="static decoder: largest LoRA rank the pool holds"
    )
    reserve_training_gib: float = Field(
        0.0, ge=0, description="static decoder: GPU memory kept out of the KV cache for a fine-tune beside it"
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="conversations decoded together")
    queue_limit: int = Field(64, ge=1, description="waiting requests beyond this are politely refused")
    queue_limit_per_user: int = Field(
        4,
        ge=1,
        description="waiting requests of one person beyond this are refused (one person cannot fill it)",
    )
    queue_limit_per_channel: int = Field(
        16, ge=1, description="waiting requests of one channel (or thread) beyond this are refused"
    )
    # remote (OpenAI-compatible chat completions); the API key comes from HANBOT_REMOTE_API_KEY or OPENAI_API_KEY
    remote_base_url: str | None = Field(None, description="e.g. http://vllm:8000/v1")
    remote_model: str | None = Field(
        None, description="model name the server knows; default: model.name_or_path"
    )
    remote_tokenizer: str | None = Field(
        None, description="tokenizer to count prompt tokens; default: model's"
    )
    remote_timeout_s: float = Field(
        60.0, gt=0, description="seconds to connect and between streamed tokens before a retry or an error"
    )
    remote_max_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="retries of a refused or dropped request before the first token (429, 5xx)",
    )


class StoreSettings(BaseModel):
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in data_dir")
    echo_sql: bool = Field(False, description="log every SQL statement (debugging only)")


class HistorySettings(BaseModel):
    max_age_days: int = Field(90, ge=1, description="turns older than this are pruned every night")
    max_messages_per_conversation: int = Field(
        500, ge=10, description="a conversation keeps at most this many turns (the oldest are pruned)"
    )
    # pruning never removes the newest turns of a conversation (what the next prompt is built from), whatever their
    # age: at most keep_recent_messages of them, as long as their stored token counts add up to keep_recent_tokens
    keep_recent_messages: int = Field(10, ge=0, description="newest turns never pruned by age")
    keep_recent_tokens: int = Field(4096, ge=0, description="token cap of those protected newest turns")


class DiscordSettings(BaseModel):
    allowed_guild_ids: list[str] = Field(
        default_factory=list,
        description="guilds the bot serves (others are refused); their Manage Server members may /finetune",
    )
    admin_user_ids: list[str] = Field(
        default_factory=list, description="user ids that are admins besides members with Manage Server"
    )
    admin_role_ids: list[str] = Field(default_factory=list, description="role ids whose members are admins")
    edit_interval_s: float = Field(1.0, ge=0.2, description="seconds between edits of a streaming reply")
    sync_guild_ids: list[str] = Field(
        default_factory=list, description="sync slash commands to these guilds now"
    )


class SlackSettings(BaseModel):
    mode: Literal["socket", "http"] = Field(
        "socket",
        description="socket: SLACK_APP_TOKEN, no public URL; http: SLACK_SIGNING_SECRET behind a URL",
    )
    http_host: str = Field("0.0.0.0", description="HTTP mode: address the events server listens on")
    http_port: int = Field(3000, description="HTTP mode: its port")
    http_path: str = Field(
        "/slack/events", description="HTTP mode: the Request URL path set in the Slack app"
    )
    allowed_team_ids: list[str] = Field(
        default_factory=list,
        description="workspaces (T…) the bot serves (others are refused); their admins may /finetune",
    )
    admin_user_ids: list[str] = Field(
        default_factory=list, description="user ids that are admins besides workspace admins and owners"
    )
    update_interval_s: float = Field(1.0, ge=0.2, description="seconds between edits of a streaming reply")
    update_budget_per_min: int = Field(
        50, ge=1, description="chat.update calls per minute per workspace, shared"
    )
    native_streaming: bool = Field(True, description="chat.startStream in threads where Slack allows it")
    api_base_url: str | None = Field(None, description="Web API base URL (tests point it at a local fake)")


class SchedulerSettings(BaseModel):
    enabled: bool = Field(True, description="run the scheduled jobs (one process at a time, by a lease)")
    timezone: str = Field("Asia/Seoul", description="time zone of the cron expressions")
    prune_cron: str = Field(
        "30 3 * * *", description="when history is pruned (crontab: min hour day month weekday)"
    )
    finetune_cron: str = Field("0 2 * * *", description="when the nightly fine-tune starts")
    finetune_enabled: bool = Field(False, description="run the nightly fine-tune")
    prune_enabled: bool = Field(True, description="run the nightly prune")
    prune_misfire_grace_s: int = Field(3600, ge=1, description="late prunes still run")
    finetune_misfire_grace_s: int = Field(6 * 3600, ge=1, description="late fine-tunes still run")
    lease_ttl_s: float = Field(120.0, ge=5.0, description="scheduler lock lease")


class FinetuneSettings(BaseModel):
    output_dir: str | None = Field(None, description="default: <data_dir>/lora")
    min_examples: int = Field(20, ge=1, description="fewer training examples than this: no run")
    eval_fraction: float = Field(
        0.2, gt=0.0, lt=0.9, description="share of the examples held out for the quality gate"
    )
    promote_margin: float = Field(
        0.02,
        ge=0.0,
        description="held-out loss must beat the base and the active version by at least this fraction",
    )
    min_eval_examples: int = Field(8, ge=2, description="a smaller held-out split refuses the run")
    gate_z: float = Field(
        2.0, ge=0, description="gains must exceed this many standard errors of the per-example differences"
    )
    min_pair_gain: float = Field(
        0.1,
        ge=0,
        description="share of held-out pairs where the true answer must win more often than with the base",
    )
    general_max_increase: float = Field(
        1.0, ge=0, description="how far the loss on the general prompts may rise (nats per token)"
    )
    epochs: float = Field(3.0, gt=0, description="passes over the training examples")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate (demo model: 1e-2 unless set)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r)")
    max_seq_len: int = Field(2048, ge=64, description="longer training sequences are cut")
    gpu_sharing: Literal["pause", "separate", "shared"] = Field(
        "pause",
        description="pause: the engine stops while training; separate: train on train_device; "
        "shared: train on the serving GPU while the bot answers (needs engine.reserve_training_gib)",
    )
    train_device: str | None = Field(None, description='with gpu_sharing="separate", e.g. "cuda:1"')
    trainer_mps_sm_percent: int | None = Field(
        None,
        ge=1,
        le=100,
        description='with gpu_sharing="shared": the share of the GPU\'s SMs the trainer may use '
        "(CUDA_MPS_ACTIVE_THREAD_PERCENTAGE); takes effect only when an MPS control daemon serves this GPU and the "
        'bot was started after it as its client (docs/learning.md, "Sharing one GPU: MPS"); unset: no limit',
    )
    trainer_mps_priority: Literal["normal", "below_normal"] | None = Field(
        None,
        description='with gpu_sharing="shared": the trainer\'s MPS client priority (CUDA_MPS_CLIENT_PRIORITY; '
        "below_normal lets the engine's kernels go first, a hint to the driver), under an MPS control daemon only "
        '(docs/learning.md, "Sharing one GPU: MPS"); unset: the daemon\'s default',
    )
    version_routes: dict[str, str] = Field(
        default_factory=dict,
        description='conversation key or prefix -> version served there, e.g. {"discord:GUILD": "v3"}; '
        '"base": no LoRA',
    )
    excluded_channels: list[str] = Field(
        default_factory=list, description="conversation keys never trained on"
    )
    opted_out_users: list[str] = Field(
        default_factory=list, description='"platform:user_id" never trained on'
    )
    extra_datasets: list[str] = Field(default_factory=list, description="JSONL files of conversations")
    context_turns: int = Field(6, ge=0, description="earlier turns kept as context with each trained reply")
    require_positive_feedback: bool = Field(False, description="only 👍 replies")
    batch_size: int = Field(8, ge=1, description="sequences per optimiser step (demo model: 8)")
    micro_batch_size: int = Field(1, ge=1, description="per forward pass (demo model: 8)")
    max_steps: int | None = Field(None, ge=1, description="default: epochs (demo model: 120)")
    quantization: Literal["auto", "4bit", "none"] = Field("auto", description="auto: 4-bit on CUDA")
    continue_from_active: bool = Field(True, description="start from the active LoRA rather than from zero")
    seed: int = Field(0, description="random seed of the data split and the training")
    python: str | None = Field(None, description="trainer interpreter")
    timeout_s: float = Field(12 * 3600.0, gt=0, description="a run still training after this long is stopped")
    announce_channel: str | None = Field(
        None,
        description='conversation key where the nightly run\'s end is posted, e.g. "slack:T0123:C0456" '
        "(/finetune run posts where it was typed)",
    )

    @model_validator(mode="after")
    def _check_trainer_mps(self) -> FinetuneSettings:
        """The MPS limits shape how the trainer shares the serving GPU; in another mode they would do nothing, so a
        setting that looks applied but is not is refused rather than ignored."""
        if self.gpu_sharing == "shared":
            return self
        named = [
            name
            for name in ("trainer_mps_sm_percent", "trainer_mps_priority")
            if getattr(self, name) is not None
        ]
        if named:
            which = " and ".join(f"finetune.{name}" for name in named)
            verb, them = ("takes", "it") if len(named) == 1 else ("take", "them")
            raise ValueError(
                f"{which} {verb} effect only when the trainer shares the serving GPU: set "
                f'finetune.gpu_sharing="shared" (HANBOT_FINETUNE__GPU_SHARING=shared), or unset {them} '
                f'(gpu_sharing is "{self.gpu_sharing}")'
            )
        return self

    @field_validator("announce_channel")
    @classmethod
    def _check_announce_channel(cls, key: str | None) -> str | None:
        if key is not None and (key.count(":") < 2 or not ROUTE_SCOPE.fullmatch(key)):
            raise ValueError(
                f"{key!r} is not a channel's conversation key: write platform:workspace:channel, e.g. "
                '"discord:123456789:987654321", "slack:T0123:C0456" or "console:-:console"'
            )
        return key

    @field_validator("version_routes")
    @classmethod
    def _check_version_routes(cls, routes: dict[str, str]) -> dict[str, str]:
        for scope, version in routes.items():
            if not ROUTE_SCOPE.fullmatch(scope):
                raise ValueError(
                    f"{scope!r} is not a conversation key or prefix: write platform:workspace[:channel[:thread]], "
                    'e.g. "discord:123456789" (a guild), "slack:T0123:C0456" (a channel), "console:-:console"'
                )
            if not ROUTE_VERSION.fullmatch(version):
                raise ValueError(f'{scope!r} -> {version!r}: name a version ("v3") or "base" (no LoRA)')
        return routes


class TenantSettings(BaseModel):
    """Which fine-tuned version each team (a Discord guild, a Slack workspace) gets: docs/learning.md, "Tenants"."""

    default: Literal["shared", "own", "base"] = Field(
        "shared",
        description="what a team not listed in tenants.versions gets: shared (one version trained on every shared "
        "team), own (a version trained on its conversations only), base (no fine-tune, never trained on)",
    )
    versions: dict[str, Literal["shared", "own", "base"]] = Field(
        default_factory=dict,
        description='team -> shared, own or base, e.g. {"discord:GUILD": "own", "slack:T0123": "base"}',
    )
    discord_dm_users: dict[str, str] = Field(
        default_factory=dict,
        description="Discord user id -> guild id: that user's DMs belong to the guild's team (else to none)",
    )
    extra_datasets: dict[str, list[str]] = Field(
        default_factory=dict,
        description="team -> JSONL files trained with its own version (finetune.extra_datasets: the shared one)",
    )
    min_changed_examples: int = Field(
        10, ge=1, description="the nightly job trains a team whose examples changed by at least this many"
    )

    @field_validator("versions", "extra_datasets")
    @classmethod
    def _check_tenant_ids(cls, mapping: dict[str, Any]) -> dict[str, Any]:
        for tenant in mapping:
            if not TENANT_ID.fullmatch(tenant):
                raise ValueError(
                    f'{tenant!r} is not a team: write discord:GUILD_ID or slack:TEAM_ID (e.g. "slack:T0123")'
                )
        return mapping

    @model_validator(mode="after")
    def _extra_datasets_need_own_versions(self) -> TenantSettings:
        for tenant in self.extra_datasets:
            if self.versions.get(tenant, self.default) != "own":
                raise ValueError(
                    f"tenants.extra_datasets names {tenant!r}, which has no own version: set "
                    f'tenants.versions["{tenant}"] = "own" (the shared version takes finetune.extra_datasets)'
                )
        return self

    @field_validator("discord_dm_users")
    @classmethod
    def _check_dm_users(cls, users: dict[str, str]) -> dict[str, str]:
        for user, guild in users.items():
            if not (user.isdigit() and guild.isdigit()):
                raise ValueError(f"{user!r} -> {guild!r}: map a Discord user id to a guild id (digits)")
        return users


class OpsSettings(BaseModel):
    enabled: bool = Field(True, description="serve /metrics, /health and /ready (in every mode)")
    port: int = Field(9464, ge=0, le=65535, description="port of that endpoint; 0: any free port")
    host: str = Field("127.0.0.1", description='address of that endpoint; "0.0.0.0" in a container')
    check_timeout_s: float = Field(
        5.0, gt=0, description="a readiness check (database, engine, platform) slower than this fails"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HANBOT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(Path("data"), description="database, LoRA versions and the demo model live here")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="message text is never logged at INFO"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (for log collectors)"
    )
    model: ModelSettings = Field(default_factory=ModelSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)

    # secrets: environment only, under their conventional names
    discord_token: SecretStr | None = Field(None, validation_alias="DISCORD_TOKEN")
    slack_bot_token: SecretStr | None = Field(None, validation_alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(None, validation_alias="SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, validation_alias="SLACK_SIGNING_SECRET")
    remote_api_key: SecretStr | None = Field(None, validation_alias="HANBOT_REMOTE_API_KEY")

    @field_validator("remote_api_key", mode="before")
    @classmethod
    def _api_key_fallback(cls, value: Any) -> Any:
        return value if value else os.environ.get("OPENAI_API_KEY") or None

    @model_validator(mode="after")
    def _check_remote(self) -> Settings:
        if self.engine.kind == "remote" and not self.engine.remote_base_url:
            raise ValueError(
                "engine.kind is 'remote' but engine.remote_base_url is empty: "
                "set HANBOT_ENGINE__REMOTE_BASE_URL (e.g. http://127.0.0.1:8000/v1)"
            )
        return self

    @model_validator(mode="after")
    def _check_fast_decoder_options(self) -> Settings:
        engine = self.engine
        if (engine.fp8_weights or engine.tensor_parallel > 1) and engine.kind == "local":
            if engine.decoder == "hf":
                raise ValueError(
                    "engine.fp8_weights and engine.tensor_parallel need the static decoder: "
                    "set HANBOT_ENGINE__DECODER=static (or auto on a GPU)"
                )
            if self.model.quantization != "none":
                raise ValueError(
                    "engine.fp8_weights and engine.tensor_parallel load the bf16 checkpoint: "
                    "set HANBOT_MODEL__QUANTIZATION=none"
                )
        return self

    @model_validator(mode="after")
    def _check_gpu_sharing(self) -> Settings:
        if self.finetune.gpu_sharing != "shared":
            return self
        if self.engine.kind != "local":
            raise ValueError(
                'finetune.gpu_sharing="shared" trains on the GPU of the engine in this process, but engine.kind is '
                '"remote": set HANBOT_FINETUNE__GPU_SHARING=separate (with finetune.train_device) instead'
            )
        # engine.reserve_training_gib: GPU memory the engine keeps out of its KV pool for the trainer
        reserved = getattr(self.engine, "reserve_training_gib", None)
        if not isinstance(reserved, int | float) or reserved <= 0:
            raise ValueError(
                'finetune.gpu_sharing="shared" needs GPU memory kept free for the trainer: set '
                "engine.reserve_training_gib (HANBOT_ENGINE__RESERVE_TRAINING_GIB; a QLoRA step of the 70B peaks at 45 GiB at 2,048 tokens; "
                "see docs/learning.md), or choose pause or separate"
            )
        return self

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        """Relative folders are taken from the working folder at start and held absolute from then on, so what the
        bot stores and hands the trainer does not depend on where a later process runs."""
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.finetune.output_dir:
            self.finetune.output_dir = str(Path(self.finetune.output_dir).expanduser().resolve())
        if self.engine.cache_dir is None:
            self.engine.cache_dir = str(self.data_dir / "cache" / "fast")
        return self

    @property
    def database_url(self) -> str:
        return self.store.database_url or f"sqlite:///{(self.data_dir / 'hanbot.db').as_posix()}"

    @property
    def lora_dir(self) -> Path:
        return Path(self.finetune.output_dir) if self.finetune.output_dir else self.data_dir / "lora"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("HANBOT_CONFIG", "hanbot.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if toml_path.is_file():
            sources.append(_SecretFreeToml(settings_cls, toml_file=toml_path))
        return tuple(sources)


class _SecretFreeToml(TomlConfigSettingsSource):
    """A TOML source that refuses secrets: they belong in the environment, not in a file in the repository."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        found = [name for name in SECRET_FIELDS if name in data or name.upper() in data]
        if found:
            raise ConfigError(
                f"the TOML settings file holds secret(s) {', '.join(found)}: remove them from the file and set "
                "them as environment variables instead (DISCORD_TOKEN, SLACK_BOT_TOKEN, SLACK_APP_TOKEN, "
                "SLACK_SIGNING_SECRET, HANBOT_REMOTE_API_KEY)"
            )
        return data


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings, turning validation errors into one ConfigError that says what to do."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(settings)"
        env = "HANBOT_" + "__".join(str(p).upper() for p in err["loc"]) if err["loc"] else ""
        hint = f" (environment variable {env})" if env else ""
        lines.append(f"  {path}{hint}: {err['msg']}")
    return "\n".join(lines)
