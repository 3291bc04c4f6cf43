"""Agent flags and environment: defaults, precedence, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlh_actors import errors
from zlh_actors.agent import config, game, main

KEY = "k" * 40
ENV = {"ZLH_AGENT_ENROLLMENT_KEY": KEY}


def test_minimal_settings_and_defaults() -> None:
    settings = config.load(["--listen", "10.0.0.5"], ENV)
    assert (settings.listen_ip, settings.listen_port) == ("10.0.0.5", 8770)
    assert settings.state_dir == Path("/var/lib/zlh-agent")
    assert settings.game_dir == Path("/var/lib/zlh-agent/game")
    assert settings.enrollment_key == KEY.encode()
    assert settings.game_command.text == game.DEFAULT_COMMAND
    assert settings.stop_timeout == 30.0
    assert settings.log_level == "INFO"


def test_environment_is_used_and_flags_win() -> None:
    env = {
        **ENV,
        "ZLH_AGENT_LISTEN": "10.0.0.5:9000",
        "ZLH_AGENT_STATE_DIR": "/srv/agent",
        "ZLH_AGENT_LOG_LEVEL": "debug",
    }
    settings = config.load([], env)
    assert (settings.listen_port, settings.state_dir, settings.log_level) == (
        9000,
        Path("/srv/agent"),
        "DEBUG",
    )
    settings = config.load(["--listen", "10.0.0.6:0", "--game-dir", "/srv/game"], env)
    assert (settings.listen_ip, settings.listen_port, settings.game_dir) == ("10.0.0.6", 0, Path("/srv/game"))


def test_ipv6_listen_address() -> None:
    assert config.parse_listen("[fd00::5]:8771") == ("fd00::5", 8771)
    assert config.parse_listen("fd00::5") == ("fd00::5", 8770)


def test_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    settings = config.load(["--listen", "10.0.0.5", "--enrollment-key-file", str(key_file)], {})
    assert settings.enrollment_key == KEY.encode()


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--listen", "agent.example"], ENV, "--listen"),
        (["--listen", "0.0.0.0:8770"], ENV, "wildcard"),
        (["--listen", "10.0.0.5:70000"], ENV, "--listen"),
        ([], {**ENV, "ZLH_AGENT_LISTEN": "nope"}, "ZLH_AGENT_LISTEN"),
        ([], ENV, "--listen"),
        (["--listen", "10.0.0.5", "--colour", "blue"], ENV, "--colour"),
        (["--listen", "10.0.0.5"], {**ENV, "ZLH_AGENT_COLOUR": "blue"}, "ZLH_AGENT_COLOUR"),
        (["--listen", "10.0.0.5"], {}, "enrollment key"),
        (["--listen", "10.0.0.5"], {"ZLH_AGENT_ENROLLMENT_KEY": "short"}, "at least 32 bytes"),
        (["--listen", "10.0.0.5", "--enrollment-key-file", "/nonexistent/key"], {}, "/nonexistent/key"),
        (["--listen", "10.0.0.5", "--enrollment-key-file", "/k"], ENV, "not both"),
        (["--listen", "10.0.0.5", "--game-command", "java -jar {jar}"], ENV, "--game-command"),
        (["--listen", "10.0.0.5", "--stop-timeout", "soon"], ENV, "--stop-timeout"),
        (["--listen", "10.0.0.5", "--log-level", "LOUD"], ENV, "--log-level"),
    ],
)
def test_bad_settings_name_the_problem(argv: list[str], env: dict[str, str], names: str) -> None:
    with pytest.raises(errors.ConfigError) as exc:
        config.load(argv, env)
    assert names in str(exc.value)
    assert "\n" not in str(exc.value)


def test_main_prints_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZLH_AGENT_ENROLLMENT_KEY", KEY)
    assert main.main(["--listen", "agent.example"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("zlh-agent: --listen='agent.example' is invalid")
    assert "Traceback" not in captured.err
