"""The `evospec-hf` command line (`evospec_hf.commands`): every command is listed, runs through the dispatcher with
its own arguments, and shows an example in its --help."""

import subprocess
import sys

import pytest

from evospec_hf import commands


def test_the_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in commands.COMMANDS:
        assert name in text
    assert "example:" in text


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_each_command_help_shows_an_example_of_itself(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: evospec-hf {name}" in text
    assert f"evospec-hf {name} --" in text  # an example command line, with its options


def test_the_dispatcher_passes_the_command_its_arguments(tmp_path, capsys):
    """An unknown option reaches the command's own parser (which names it), not the dispatcher's."""
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["export-token-map", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "evospec-hf export-token-map" in capsys.readouterr().err


def test_an_unknown_command_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["distil"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_commands():
    result = subprocess.run([sys.executable, "-m", "evospec_hf", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "build-semantic-index" in result.stdout
    result = subprocess.run([sys.executable, "-m", "evospec_hf.commands.distill", "--help"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and "usage: evospec-hf distill" in result.stdout
