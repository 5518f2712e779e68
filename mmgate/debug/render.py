"""How the debug server shows a message: text for people, JSON for scripts.

The text keeps smtpd DebuggingServer's markers and its ``X-Peer:`` line
after the headers, so a person who knew ``python -m smtpd -c
DebuggingServer`` reads it at once; above the markers comes the envelope,
with the route the gateway would take for every recipient. Long bodies and
attachments are summarised as a MIME tree (type, size, name) unless the
whole message is asked for.
"""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from typing import Any

from mmgate.router import Decision

#: Bodies longer than this are summarised unless --full.
BODY_LINES = 40
PREVIEW_LINES = 10


@dataclass
class Seen:
    """One message as the debug server received it."""

    number: int
    when: datetime
    client: str
    helo: str
    esmtp: bool
    mail_from: str
    mail_options: list[str]
    recipients: list[Decision]
    data: bytes
    long_lines: bool = False
    bare_line_endings: bool = False
    outcome: str | None = None  #: what the lab did with it (queued in Mailman, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        out = []
        if self.long_lines:
            out.append("long lines (over 1000 octets)")
        if self.bare_line_endings:
            out.append("bare CR or LF line endings")
        return out


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Header block and body, at the first empty line (CRLF or LF)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end >= 0:
            return data[:end], data[end + len(sep) :]
    return data, b""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _lines(raw: bytes) -> list[str]:
    return _text(raw).replace("\r\n", "\n").replace("\r", "\n").split("\n")


def mime_tree(msg: Message) -> list[dict[str, Any]]:
    """Every MIME part: depth, type, size of its payload, file name, encoding."""
    parts: list[dict[str, Any]] = []

    def walk(part: Message, depth: int) -> None:
        payload = part.get_payload(decode=False)
        entry: dict[str, Any] = {"depth": depth, "type": part.get_content_type()}
        if part.get_filename():
            entry["filename"] = part.get_filename()
        if part.get("Content-Transfer-Encoding"):
            entry["encoding"] = str(part.get("Content-Transfer-Encoding")).lower()
        if part.is_multipart():
            parts.append(entry)
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    walk(sub, depth + 1)
            return
        decoded = part.get_payload(decode=True)
        entry["size"] = len(decoded) if isinstance(decoded, bytes) else len(str(payload))
        parts.append(entry)

    walk(msg, 0)
    return parts


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _tree_lines(tree: list[dict[str, Any]]) -> list[str]:
    out = []
    for part in tree:
        what = part["type"]
        if "filename" in part:
            what += f' "{part["filename"]}"'
        if "size" in part:
            what += f"  {_size(part['size'])}"
        if "encoding" in part:
            what += f" ({part['encoding']})"
        out.append("  " * part["depth"] + "- " + what)
    return out


def analyse(data: bytes) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The MIME tree, or None and why it could not be read."""
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        return mime_tree(msg), None
    except Exception as exc:  # a malformed message must still be shown
        return None, f"{type(exc).__name__}: {exc}"


def render_text(seen: Seen, *, full: bool = False) -> str:
    out = [
        f"=== message {seen.number} from {seen.client} at {seen.when:%H:%M:%S} ===",
        f"HELO:      {seen.helo} ({'ESMTP' if seen.esmtp else 'SMTP'})",
        f"MAIL FROM: <{seen.mail_from}>" + "".join(f" {o}" for o in seen.mail_options),
    ]
    width = max((len(d.route.address) for d in seen.recipients), default=0) + 2
    for d in seen.recipients:
        out.append(f"RCPT TO:   {'<' + d.route.address + '>':<{width}}  {d.describe()}")
    out.append(f"Size:      {len(seen.data)} octets")
    if seen.flags:
        out.append("Flags:     " + "; ".join(seen.flags))
    if seen.outcome:
        out.append(f"Lab:       {seen.outcome}")
    out.extend(f"Note:      {note}" for note in seen.notes)
    out.append("---------- MESSAGE FOLLOWS ----------")
    headers, body = _split(seen.data)
    out.extend(_lines(headers))
    out.append(f"X-Peer: {seen.client.rsplit(':', 1)[0]}")
    out.append("")
    body_lines = _lines(body)
    if body_lines and body_lines[-1] == "":
        body_lines.pop()
    tree, problem = analyse(seen.data)
    multipart = bool(tree and tree[0]["type"].startswith("multipart/"))
    if full or (len(body_lines) <= BODY_LINES and not multipart):
        out.extend(body_lines)
    else:
        if not multipart:
            out.extend(body_lines[:PREVIEW_LINES])
            out.append(f"[... {len(body_lines) - PREVIEW_LINES} more lines; --full shows all]")
        else:
            out.append("[multipart body summarised; --full shows it all]")
    if tree is not None and (multipart or (not full and len(body_lines) > BODY_LINES)):
        out.append("[MIME]")
        out.extend(_tree_lines(tree))
    if problem is not None:
        out.append(f"[MIME unreadable: {problem}]")
    out.append("------------ END MESSAGE ------------")
    return "\n".join(out)


def render_json(seen: Seen, *, full: bool = False) -> str:
    body = _split(seen.data)[1]
    tree, problem = analyse(seen.data)
    msg = email.message_from_bytes(seen.data, policy=email.policy.compat32)
    record: dict[str, Any] = {
        "number": seen.number,
        "time": seen.when.isoformat(timespec="seconds"),
        "client": seen.client,
        "helo": seen.helo,
        "esmtp": seen.esmtp,
        "mail_from": seen.mail_from,
        "mail_options": seen.mail_options,
        "recipients": [d.as_dict() for d in seen.recipients],
        "size": len(seen.data),
        "flags": {"long_lines": seen.long_lines, "bare_line_endings": seen.bare_line_endings},
        "headers": [[k, str(v)] for k, v in msg.items()],
        "subject": str(msg.get("Subject", "")),
        "mime": tree,
    }
    if problem is not None:
        record["mime_error"] = problem
    if seen.outcome:
        record["lab"] = seen.outcome
    body_text = _text(body)
    record["body"] = body_text if full or len(body_text) <= 8192 else body_text[:8192]
    record["body_truncated"] = len(record["body"]) < len(body_text)
    return json.dumps(record, ensure_ascii=False)
