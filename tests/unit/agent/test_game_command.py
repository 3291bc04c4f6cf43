"""The game command template and exit descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from zlh_actors.agent import game


def test_default_command_renders_the_java_line() -> None:
    template = game.CommandTemplate.parse(game.DEFAULT_COMMAND)
    argv = template.render(
        launcher=Path("/srv/game dir/fabric-server-launch.jar"),
        ip="10.0.0.5",
        port=25565,
        memory_mb=2048,
        directory=Path("/srv/game dir"),
        python="/usr/bin/python3",
    )
    assert argv == [
        "java",
        "-Xms2048M",
        "-Xmx2048M",
        "-jar",
        "/srv/game dir/fabric-server-launch.jar",
        "nogui",
    ]


def test_values_never_split_into_extra_arguments() -> None:
    template = game.CommandTemplate.parse("{python} '{launcher}' --host={ip} --port {port} --dir {dir}")
    argv = template.render(
        launcher=Path("/a b/l.jar"), ip="127.0.0.1", port=1, memory_mb=1, directory=Path("/x y"), python="py"
    )
    assert argv == ["py", "/a b/l.jar", "--host=127.0.0.1", "--port", "1", "--dir", "/x y"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("java -jar {jar}", "unknown placeholder {jar}"),
        ("java -jar {launcher.__class__}", "unknown placeholder"),
        ("java -jar {launcher", "bad placeholder"),
        ("java 'unclosed", "cannot split"),
    ],
)
def test_bad_templates_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        game.CommandTemplate.parse(text)


def test_exit_descriptions() -> None:
    assert game.describe_exit(0) == "exited with code 0"
    assert game.describe_exit(1) == "exited with code 1"
    assert game.describe_exit(-9) == "killed by SIGKILL (exit code -9)"
