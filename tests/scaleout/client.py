"""The client host of the scale-out test: run inside its namespace as
``python -m tests.scaleout.client COMMAND ...``; prints one JSON document.

posts  HOST:PORT N CONCURRENCY TAG [SECONDS]
    N posts to test@example.com, one SMTP session each, through the load
    balancer (with SECONDS, as many as fit in that time, N ignored). For
    each: which gateway greeted, the final reply, the Message-ID. Each line
    also goes to stderr as it happens, so a test can read progress while
    it kills a gateway.
pause  LB_HOST:PORT API_URL TOKEN LIST_ID
    Pause the list through API_URL, then find how long each gateway takes
    to refuse a post to it (451); resume it, and find how long each takes
    to accept one again.
get    URL TOKEN
    One GET of the admin API.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sys
import threading
import time
import urllib.request
from typing import Any

POST = (
    "From: client@client.test\r\nTo: test@example.com\r\nSubject: scale-out\r\n"
    "Message-ID: {mid}\r\n\r\nOne post through HAProxy.\r\n"
)


def _hostport(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


class _Session(smtplib.SMTP):
    """smtplib, keeping the greeting: its host name says which gateway."""

    greeting = ""

    def getreply(self) -> tuple[int, bytes]:
        code, text = super().getreply()
        if not self.greeting:
            self.greeting = text.decode(errors="replace").split()[0] if text else "?"
        return code, text


def post(lb: tuple[str, int], mid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"mid": mid, "gateway": None, "code": None, "error": None}
    start = time.monotonic()
    try:
        with _Session(*lb, timeout=10) as s:
            out["gateway"] = s.greeting
            s.ehlo("client.test")
            s.mail("client@client.test")
            code, _ = s.rcpt("test@example.com")
            if code != 250:
                out["code"] = code
            else:
                out["code"], _ = s.data(POST.format(mid=mid).encode())
    except (OSError, smtplib.SMTPException) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["at"] = time.time()
    out["seconds"] = time.monotonic() - start
    return out


def posts(lb: tuple[str, int], count: int, concurrency: int, tag: str, seconds: float) -> None:
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    numbers = iter(range(10**9))
    start = time.monotonic()

    def worker() -> None:
        while True:
            with lock:
                n = next(numbers)
            if (seconds and time.monotonic() - start >= seconds) or (not seconds and n >= count):
                return
            got = post(lb, f"<{tag}-{n}@client.test>")
            with lock:
                results.append(got)
                sys.stderr.write(json.dumps(got) + "\n")
                sys.stderr.flush()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    print(json.dumps({"elapsed": elapsed, "results": results}))


def _api(url: str, token: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def _greeted_pair(lb: tuple[str, int]) -> list[tuple[str, smtplib.SMTP]]:
    """Two sessions open at once: with leastconn, one on each gateway."""
    pair = []
    for _ in range(2):
        s = _Session(*lb, timeout=10)
        pair.append((s.greeting, s))
    return pair


def _until_each_gateway_answers(lb: tuple[str, int], want: int) -> dict[str, float]:
    """Seconds until each gateway answers RCPT to the list with ``want``."""
    t0 = time.monotonic()
    after: dict[str, float] = {}
    while len(after) < 2 and time.monotonic() - t0 < 10:
        for name, s in _greeted_pair(lb):
            try:
                s.ehlo("client.test")
                s.mail("client@client.test")
                code, _ = s.rcpt("test@example.com")
                if code == want and name not in after:
                    after[name] = time.monotonic() - t0
                s.quit()
            except (OSError, smtplib.SMTPException):
                s.close()
        time.sleep(0.02)
    return after


def pause(lb: tuple[str, int], api: str, token: str, list_id: str) -> None:
    paused = _api(f"{api}/v1/lists/{list_id}/pause", token, "PUT")
    refused_after = _until_each_gateway_answers(lb, 451)
    resumed = _api(f"{api}/v1/lists/{list_id}/pause", token, "DELETE")
    accepted_after = _until_each_gateway_answers(lb, 250)
    print(
        json.dumps(
            {
                "paused": paused,
                "refused_after": refused_after,
                "resumed": resumed,
                "accepted_after": accepted_after,
            }
        )
    )


def main(argv: list[str]) -> None:
    socket.setdefaulttimeout(10)
    command, *rest = argv
    if command == "posts":
        lb, count, concurrency, tag, *secs = rest
        posts(_hostport(lb), int(count), int(concurrency), tag, float(secs[0]) if secs else 0.0)
    elif command == "pause":
        lb, api, token, list_id = rest
        pause(_hostport(lb), api, token, list_id)
    elif command == "get":
        url, token = rest
        print(json.dumps(_api(url, token)))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
