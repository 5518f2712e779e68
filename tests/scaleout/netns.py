"""Hosts for a test, as Linux network namespaces joined by a bridge.

The bridge lives in a namespace of its own (the "switch"), so the root
namespace has no interface and no address on the test network: nothing in
it can reach a host, and no host has a route out (each knows only its own
subnet). Every process that talks is started inside a host with
``ip netns exec``; readiness is read with ``ss`` inside the host, never by
connecting from outside. :meth:`Network.close` kills whatever runs in the
namespaces and deletes them, and runs even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

SUBNET = "10.231.0"


def available() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "iproute2 (ip, ss) is not installed"
    probe = f"mmgate-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Network:
    """Hosts by name, each with one address in ``SUBNET``.0/24."""

    def __init__(self, hosts: dict[str, int]) -> None:
        self.tag = f"mmg{os.getpid() % 100000}"
        self.hosts = {name: f"{SUBNET}.{last}" for name, last in hosts.items()}
        self.switch = f"{self.tag}-sw"
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def open(self) -> Network:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for n, (host, address) in enumerate(self.hosts.items()):
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # created with each end already in its namespace: never in the root's
            port = f"p{n}"
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.switch,
            )
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A process inside ``host``; ``ip netns exec`` execs it, so the
        PID is the process's own, and it is killed at :meth:`close`."""
        proc = subprocess.Popen([*self.prefix(host), *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def run(
        self, host: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run([*self.prefix(host), *argv], **kwargs)

    def wait_listening(
        self, host: str, port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 30
    ) -> None:
        """Until something in ``host`` listens on TCP ``port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{host}: {proc.args} exited with {proc.returncode}")
            out = self.run(
                host, ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
            )
            if out.stdout.strip():
                return
            time.sleep(0.1)
        raise AssertionError(f"{host}: nothing listens on port {port}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.made):
            # anything still inside (a child of a child) would keep it alive
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
