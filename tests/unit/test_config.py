"""Configuration: defaults, parsing, and one clear error for anything wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlh_actors import config, errors


def test_defaults_need_no_environment() -> None:
    settings = config.load({})
    assert settings.database_url is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.data_dir == Path(".zlh")


def test_environment_and_flags_are_parsed() -> None:
    settings = config.load(
        {"ZLH_PORT": "9000", "DATABASE_URL": "postgresql://u@h/db", "ZLH_LOG_LEVEL": "debug"}, port="9100"
    )
    assert settings.port == 9100
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.log_level == "DEBUG"


def test_unknown_setting_is_named() -> None:
    with pytest.raises(errors.ConfigError, match="unknown setting ZLH_PROT"):
        config.load({"ZLH_PROT": "1"})


def test_unrelated_environment_is_ignored() -> None:
    assert config.load({"HOME": "/root", "PATH": "/bin"}).port == 8080


def test_the_command_lines_variables_are_not_taken_for_misspelled_settings() -> None:
    assert config.load({"ZLH_URL": "http://x", "ZLH_TOKEN": "t", "ZLH_CONFIG": "/c"}).port == 8080


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ZLH_PORT", "abc"),
        ("ZLH_PORT", "70000"),
        ("ZLH_DB_POOL_SIZE", "0"),
        ("ZLH_LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://x"),
        ("ZLH_DB_CONNECT_TIMEOUT", "-1"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(errors.ConfigError, match=name):
        config.load({name: value})


def test_a_command_retention_shorter_than_the_idempotency_ttl_is_refused() -> None:
    with pytest.raises(
        errors.ConfigError, match="ZLH_COMMAND_RETENTION=3600 is shorter than ZLH_IDEMPOTENCY_TTL"
    ):
        config.load({"ZLH_COMMAND_RETENTION": "3600"})  # the TTL's default is a day
    settings = config.load({"ZLH_COMMAND_RETENTION": "3600", "ZLH_IDEMPOTENCY_TTL": "3600"})
    assert (settings.command_retention, settings.idempotency_ttl) == (3600.0, 3600.0)


def test_every_setting_is_a_settings_field() -> None:
    fields = set(config.Settings.__dataclass_fields__)
    assert {setting.field for setting in config.SETTINGS} == fields


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [setting.env for setting in config.SETTINGS if f"`{setting.env}`" not in readme]
    assert missing == []


def test_the_systemd_environment_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "systemd" / "zlh-actors.env.example"
    settings = config.load(config.read_env_file(example))
    assert settings.pve_host == "pve1.internal"
    assert settings.vmid_range == (10000, 19999)
