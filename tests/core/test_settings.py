from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import DEFAULT_MODEL, DEFAULT_SYSTEM_PROMPT, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env / hanbot.toml
    for name in (
        "DISCORD_TOKEN",
        "SLACK_BOT_TOKEN",
        "OPENAI_API_KEY",
        "HANBOT_REMOTE_API_KEY",
        "HANBOT_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_prototypes() -> None:
    s = load_settings()
    assert s.model.name_or_path == DEFAULT_MODEL
    assert s.model.system_prompt == DEFAULT_SYSTEM_PROMPT
    g = s.generation
    assert (g.temperature, g.top_p, g.repetition_penalty, g.max_new_tokens) == (0.6, 0.9, 1.1, 256)
    assert s.database_url.startswith("sqlite:///")


def test_environment_and_nested_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANBOT_GENERATION__MAX_NEW_TOKENS", "512")
    monkeypatch.setenv("HANBOT_DISCORD__ADMIN_USER_IDS", '["42"]')
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")
    s = load_settings()
    assert s.generation.max_new_tokens == 512
    assert s.discord.admin_user_ids == ["42"]
    assert s.discord_token is not None and s.discord_token.get_secret_value() == "secret-token-value"
    assert "secret-token-value" not in repr(s) and "secret-token-value" not in s.model_dump_json()


def test_invalid_value_names_the_setting_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANBOT_GENERATION__TOP_P", "7")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "generation.top_p" in str(exc.value)
    assert "HANBOT_GENERATION__TOP_P" in str(exc.value)


def test_remote_engine_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANBOT_ENGINE__KIND", "remote")
    with pytest.raises(ConfigError, match="HANBOT_ENGINE__REMOTE_BASE_URL"):
        load_settings()


def test_toml_file_is_read_but_secrets_in_it_are_refused(tmp_path: Path) -> None:
    (tmp_path / "hanbot.toml").write_text("[generation]\nmax_new_tokens = 99\n", encoding="utf-8")
    assert load_settings().generation.max_new_tokens == 99
    (tmp_path / "hanbot.toml").write_text('discord_token = "abc"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="environment"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "advice"),
    [
        ({"HANBOT_ENGINE__FP8_WEIGHTS": "true", "HANBOT_ENGINE__DECODER": "hf"}, "HANBOT_ENGINE__DECODER"),
        ({"HANBOT_ENGINE__TENSOR_PARALLEL": "2", "HANBOT_ENGINE__DECODER": "hf"}, "HANBOT_ENGINE__DECODER"),
        (
            {"HANBOT_ENGINE__FP8_WEIGHTS": "true", "HANBOT_MODEL__QUANTIZATION": "4bit"},
            "HANBOT_MODEL__QUANTIZATION",
        ),
    ],
)
def test_fast_decoder_options_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], advice: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=advice):
        load_settings()


def test_fp8_and_tensor_parallel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANBOT_ENGINE__FP8_WEIGHTS", "true")
    monkeypatch.setenv("HANBOT_ENGINE__TENSOR_PARALLEL", "2")
    settings = load_settings()
    assert settings.engine.fp8_weights and settings.engine.tensor_parallel == 2


def test_trainer_mps_limits_are_checked_and_apply_only_when_sharing_the_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """finetune.trainer_mps_*: 1..100 percent and two priority levels (all MPS has), and only with
    gpu_sharing="shared": in another mode they would do nothing, so they are refused, naming what to change."""
    shared = {"gpu_sharing": "shared"}
    engine = {"reserve_training_gib": 46}
    s = load_settings(
        finetune={**shared, "trainer_mps_sm_percent": 40, "trainer_mps_priority": "below_normal"},
        engine=engine,
    )
    assert (s.finetune.trainer_mps_sm_percent, s.finetune.trainer_mps_priority) == (40, "below_normal")
    unset = load_settings()
    assert (unset.finetune.trainer_mps_sm_percent, unset.finetune.trainer_mps_priority) == (None, None)
    for bad in (0, 101):
        with pytest.raises(ConfigError, match="HANBOT_FINETUNE__TRAINER_MPS_SM_PERCENT"):
            load_settings(finetune={**shared, "trainer_mps_sm_percent": bad}, engine=engine)
    with pytest.raises(ConfigError, match="HANBOT_FINETUNE__TRAINER_MPS_PRIORITY"):
        load_settings(finetune={**shared, "trainer_mps_priority": "high"}, engine=engine)
    with pytest.raises(ConfigError, match=r'finetune.trainer_mps_sm_percent takes effect only .*"pause"'):
        load_settings(finetune={"trainer_mps_sm_percent": 40})
    monkeypatch.setenv("HANBOT_FINETUNE__GPU_SHARING", "separate")
    monkeypatch.setenv("HANBOT_FINETUNE__TRAINER_MPS_PRIORITY", "normal")
    with pytest.raises(ConfigError, match=r"trainer_mps_priority takes effect only .*GPU_SHARING=shared"):
        load_settings()
