"""`cilia completion bash|zsh`: the scripts complete commands, options, choices and files, and follow the
parser (a new sub-command or flag appears without touching the generator). Run in real bash and zsh."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cilia.cli import build_parser
from cilia.completion import completion_script

ROOT = Path(__file__).resolve().parents[2]


def _bash(script: str, *lines: str) -> list[str]:
    """COMPREPLY (space-joined) after completing each line; the cursor is at its end."""
    calls = "\n".join(f"t {line}" for line in lines)
    prog = script + "\n" + 't() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=(); ' \
        '_cilia; echo "${COMPREPLY[*]}"; }\n' + calls + "\n"
    out = subprocess.run(["bash", "--norc", "-c", prog], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_bash_completes_commands_options_choices_and_files() -> None:
    script = subprocess.run([sys.executable, "-m", "cilia", "completion", "bash"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    got = _bash(script, "cilia se", "cilia serve --log-f", "cilia translate -o ''", "cilia ca ''",
                "cilia --log-level debug ca r", "cilia ca init --d", "cilia serve -f pyproj", "cilia completion ''",
                "cilia serve --mesh-default-mode s", "cilia serve --xds ''", "cilia status --admin 127.0.0.1:1 -")
    assert got[0] == "serve"
    assert got[1] == "--log-format"
    assert got[2].split() == ["json", "yaml"]
    assert got[3].split() == ["init", "rotate", "show"]
    assert got[4] == "rotate"  # a top-level option and its value are skipped
    assert got[5] == "--dir"
    assert got[6] == "pyproject.toml"  # -f takes a file
    assert got[7].split() == ["bash", "zsh"]
    assert got[8] == "sidecar"
    assert got[9] == ""  # a free-form value: nothing to suggest
    assert {"--admin", "--output", "-o", "--help"} <= set(got[10].split())


def test_script_follows_the_parser() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("frobnicate", help="a command the generator has never seen")
    extra.add_argument("--speed", choices=("slow", "fast"))
    extra.add_argument("--config-file", metavar="FILE")
    got = _bash(completion_script(parser, "bash"), "cilia frob", "cilia frobnicate --speed ''",
                "cilia frobnicate --config-file pyproj")
    assert got == ["frobnicate", "slow fast", "pyproject.toml"]
    with pytest.raises(ValueError, match="fish"):
        completion_script(parser, "fish")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (scripts/setup.sh installs it)")
def test_zsh_script_drives_the_completion_builtins() -> None:
    script = subprocess.run([sys.executable, "-m", "cilia", "completion", "zsh"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert script.startswith("#compdef cilia\n")
    # Stand-ins for zsh's completion functions record what the script offers.
    prog = """
compadd() { [[ $1 == -- ]] && shift; print -r -- "compadd $*"; }
_describe() { print -r -- "describe ${(j:|:)${(P)${@[-1]}}}"; }
_files() { print -r -- files; }
""" + script + """
t() { words=("$@"); CURRENT=${#words}; _cilia; }
t cilia ''; t cilia ca ''; t cilia translate -o ''; t cilia serve -f ''; t cilia --log-format json completion ''
"""
    out = subprocess.run(["zsh", "-f", "-c", prog], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    top = dict(item.split(":", 1) for item in lines[0].removeprefix("describe ").split("|"))
    assert {"serve", "translate", "status", "completion", "ca"} <= top.keys()
    assert top["serve"].startswith("run the control plane")
    assert lines[1] == ("describe init:create a CA in DIR (ECDSA P-256; key mode 0600)|"
                        "rotate:new CA; the old root stays trusted for --overlap|"
                        "show:trust domain and roots of the CA in DIR")
    assert lines[2:] == ["compadd json yaml", "files", "compadd bash zsh"]
