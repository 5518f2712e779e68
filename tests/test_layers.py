"""The layers of docs/architecture.md, enforced: each part imports only what
lies below it, so the protocol core stays sans-I/O and the admin API never
drags in the SMTP server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmgate"

#: what each part may never import (statically, at any depth of the code)
FORBIDDEN = {
    "mmgate.smtp": ("mmgate.",),  # below everything: only mmgate.smtp itself
    "mmgate.hooks": ("mmgate.",),
    "mmgate.spoolfile": ("mmgate.",),
    "mmgate.tls": ("mmgate.",),
    "mmgate.proxyheader": ("mmgate.",),
    "mmgate.config": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.settings": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.router": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.store": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.postmaster": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.relay": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.mailman": ("mmgate.server", "mmgate.channel", "mmgate.gateway", "mmgate.cli"),
    "mmgate.api": (
        "mmgate.server",
        "mmgate.channel",
        "mmgate.gateway",
        "mmgate.proxy",
        "mmgate.cli",
        "mmgate.debug",
    ),
}
ALLOWED = {
    "mmgate.smtp": ("mmgate.smtp",),
    "mmgate.hooks": ("mmgate.smtp", "mmgate.spoolfile"),
    "mmgate.spoolfile": (),
    "mmgate.tls": (),
    "mmgate.proxyheader": (),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _parts() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for part in FORBIDDEN:
            if module == part or module.startswith(part + "."):
                out.append((part, path))
    return out


@pytest.mark.parametrize(("part", "path"), _parts(), ids=lambda x: str(x))
def test_each_part_imports_nothing_above_it(part: str, path: Path):
    allowed = ALLOWED.get(part, ())
    bad = sorted(
        name
        for name in _imports(path)
        if name.startswith(FORBIDDEN[part])
        and not name.startswith(allowed)
        and name != "mmgate._version"
    )
    assert bad == [], f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def test_import_mmgate_smtp_loads_no_event_loop_no_server_and_no_mailman():
    loaded = _loaded_after("import mmgate.smtp")
    assert not {m for m in loaded if m.split(".")[0] in ("asyncio", "mailman", "aiosmtplib")}
    assert not {
        m for m in loaded if m.startswith("mmgate.") and not m.startswith("mmgate.smtp")
    } - {"mmgate._version", "mmgate._interpreted"}  # (the latter: MMGATE_PURE_PYTHON's finder)


def test_import_mmgate_api_loads_no_smtp_server_gateway_or_cli():
    loaded = _loaded_after("import mmgate.api")
    assert "mmgate.api.app" in loaded
    assert not loaded & {
        "mmgate.server",
        "mmgate.channel",
        "mmgate.gateway",
        "mmgate.proxy",
        "mmgate.cli",
    }


def test_smtpd_names_still_import_from_the_package():
    loaded = _loaded_after("from mmgate import SMTPServer, SMTPChannel, PureProxy, loop")
    assert {"mmgate.server", "mmgate.channel", "mmgate.proxy"} <= loaded
    assert "mmgate.gateway" not in loaded  # MailmanProxy loads Mailman: only when asked
