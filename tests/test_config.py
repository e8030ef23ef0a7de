"""Config loading: precedence, environment, and errors that name the key."""

from pathlib import Path

import pytest

from scheduler import ConfigError, Secret, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vsched.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    """With nothing given, every section has its documented default."""
    config = load_config(env={})
    assert config.limits.tpm == 30_000
    assert config.api.base_url == "https://api.openai.com/v1"
    assert config.api.api_key is None


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the file, which beats the default."""
    path = write(tmp_path, "[limits]\ntpm = 1000\nrpm = 10\nburst_seconds = 2.0\n")
    config = load_config(
        path,
        env={"VSCHED_LIMITS_TPM": "2000", "VSCHED_LIMITS_RPM": "20"},
        overrides={"limits.tpm": 3000, "limits.rpm": None},
    )
    assert config.limits.tpm == 3000
    assert config.limits.rpm == 20
    assert config.limits.burst_seconds == 2.0


def test_openai_env_variables(tmp_path: Path) -> None:
    """OPENAI_API_KEY and OPENAI_BASE_URL come from the environment; the key hides its value."""
    config = load_config(env={"OPENAI_API_KEY": "sk-secret", "OPENAI_BASE_URL": "http://x/v1"})
    assert config.api.base_url == "http://x/v1"
    assert isinstance(config.api.api_key, Secret)
    assert config.api.api_key.reveal() == "sk-secret"
    assert "sk-secret" not in repr(config)
    assert "sk-secret" not in str(config.api.api_key)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[limits]\ntmp = 5\n", "limits.tmp: unknown key"),
        ("[limits]\ntpm = 'many'\n", "limits.tpm: expected an integer"),
        ("[limits]\ntpm = -1\n", "limits.tpm: expected a positive number"),
        ("[limits]\nsettle = 'sometimes'\n", "limits.settle: expected one of"),
        ("[limts]\ntpm = 5\n", "limts: unknown section"),
        ("[api]\napi_key = 'sk-x'\n", "api.api_key"),
        ("[api]\nbase_url = 'ftp://x'\n", "api.base_url"),
        ("[models]\ngpt = 5\n", "models: expected a table of tables"),
        ("[redis]\nsocket_timeout = 0\n", "redis.socket_timeout: expected a positive number"),
        ("[limits\n", "config file"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    """Each kind of bad config is a ConfigError whose message names the offending key."""
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(write(tmp_path, text), env={})


def test_env_values_are_parsed_and_checked() -> None:
    """Environment text is parsed to the field's type, and bad text names the variable's key."""
    env = {"VSCHED_IMAGES_ALLOW_LOCAL": "false", "VSCHED_RETRY_MAX_BACKOFF": "5"}
    config = load_config(env=env)
    assert config.images.allow_local is False
    assert config.retry.max_backoff == 5.0
    with pytest.raises(ConfigError, match=r"concurrency\.max_in_flight"):
        load_config(env={"VSCHED_CONCURRENCY_MAX_IN_FLIGHT": "lots"})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A --config path that does not exist is a clear error, not a traceback."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_example_config_loads() -> None:
    """config.example.toml at the root is valid and matches the defaults it documents."""
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "config.example.toml", env={})
    assert config.limits == load_config(env={}).limits
