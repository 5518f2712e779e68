"""The protocol core compiled by mypyc (setup.py) and the same core
interpreted: which one runs is a matter of the install, never of results."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import can_build_native

ROOT = Path(__file__).resolve().parent.parent


def _core() -> list[str]:
    """setup.py's list of the modules mypyc compiles, as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CORE":
            paths: list[str] = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no CORE list")


def _loaded_from(env: dict[str, str]) -> dict[str, str]:
    """Where a fresh interpreter finds each core module under ``env``."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    print(name, importlib.import_module(name).__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *_core()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_pure_python_imports_the_core_from_its_source():
    env = {**os.environ, "MMGATE_PURE_PYTHON": "1"}
    found = _loaded_from(env)
    assert sorted(found) == sorted(_core())
    assert all(path.endswith(".py") for path in found.values()), found


def test_the_core_is_compiled_wherever_it_can_be():
    """Where a C compiler and Python's headers are, the install compiled
    the core: the benchmarks measure it, so a build that silently fell back
    to the interpreter must not pass unseen."""
    if not can_build_native():
        pytest.skip("no C compiler or no Python headers: the core runs interpreted")
    if os.environ.get("MMGATE_NO_MYPYC"):
        pytest.skip("MMGATE_NO_MYPYC: the core was installed uncompiled on purpose")
    env = {k: v for k, v in os.environ.items() if k != "MMGATE_PURE_PYTHON"}
    found = _loaded_from(env)
    assert not [name for name, path in found.items() if path.endswith(".py")], found


def test_a_compiled_event_equals_and_shows_as_the_dataclass_it_is():
    """The hot events write their own ``__init__`` (compiled); equality,
    repr and dataclasses.replace still come from the dataclass."""
    import dataclasses

    from mmgate.smtp.events import Command, MailFrom, RcptTo
    from mmgate.smtp.framing import CommandLine, MessageData

    assert Command("MAIL", "FROM:<a@b>", "MAIL FROM:<a@b>") == Command(
        "MAIL", "FROM:<a@b>", "MAIL FROM:<a@b>"
    )
    assert MailFrom("a@b").params == {} and MailFrom("a@b").params is not MailFrom("a@b").params
    assert repr(RcptTo("x@y", notify=("NEVER",))) == (
        "RcptTo(address='x@y', params={}, options=(), notify=('NEVER',), orcpt=None)"
    )
    assert dataclasses.replace(MailFrom("a@b", size=10), size=20) == MailFrom("a@b", size=20)
    assert CommandLine(b"NOOP") != CommandLine(b"QUIT")
    assert MessageData(b"x", 1, lf=True).lf and not MessageData(b"x", 1).raw
