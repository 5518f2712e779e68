"""``headers``: add or remove header fields on accepted mail.

Options: ``add``, a table of ``Name = "value"`` (values may use
``{client_ip}``, ``{helo}`` and ``{mail_from}``), added at the top of the
header; ``remove``, a list of field names, every occurrence removed (with
its folded lines). Removal happens first, so a field can be replaced.
Runs at ``data_post``, once the whole message is in, before delivery.
"""

from __future__ import annotations

import re
from typing import Any

from mmgate.hooks import Message

_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 2.2: printable, no colon


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _clean(value: str) -> str:
    """No CR or LF may come from a value (header injection)."""
    return "".join(c if c not in "\r\n" else " " for c in value)


class Headers:
    name = "headers"

    def __init__(self, add: dict[str, Any] | None = None, remove: list[Any] | None = None) -> None:
        self.add: list[tuple[str, str]] = []
        for field, value in (add or {}).items():
            if not _FIELD_NAME.fullmatch(field) or not isinstance(value, str):
                raise ValueError(f"add: {field!r} = {value!r} is not a field name and a string")
            self.add.append((field, value))
        self.remove = []
        for field in remove or []:
            if not isinstance(field, str) or not _FIELD_NAME.fullmatch(field):
                raise ValueError(f"remove: {field!r} is not a field name")
            self.remove.append(field)

    def hook_data_post(self, ctx: Any, message: Message) -> None:
        for field in self.remove:
            message.remove_header(field)
        values = _Values(
            client_ip=str(ctx.client_ip), helo=str(ctx.seen_greeting), mail_from=message.mail_from
        )
        for field, template in reversed(self.add):
            message.add_header(field, _clean(template.format_map(values)))
