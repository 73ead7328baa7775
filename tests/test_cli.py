"""The single entry point: ``calogan <command>`` and ``python -m calogan <command>``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from calogan.__main__ import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        lines = [ln for ln in out.splitlines() if ln.split()[:1] == [name]]
        assert len(lines) == 1 and len(lines[0].split()) > 2, name


def test_python_dash_m_calogan_help_exits_0():
    proc = subprocess.run([sys.executable, "-m", "calogan", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "rich-train" in proc.stdout


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-command" in err[0]
    assert main([]) == 2


def test_a_command_is_routed_to_its_main(capsys):
    assert main(["simulate", "--help"]) == 0
    assert "--n-train" in capsys.readouterr().out
    assert main(["simulate", "--n-train", "-1"]) == 2  # argparse's bad-option status, as python -m gives


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_has_a_main(name):
    assert callable(importlib.import_module(COMMANDS[name][0]).main)


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'calogan = "calogan.__main__:main"' in scripts
