"""Benchmark of list ingestion: mmgate against Mailman's own LMTP runner.

    python -m benchmarks.mailman [--quick] [--file-system tmpdir|journaled|both]

One Mailman home (SQLite) with one list; 16 connections (smtp-source, in
SMTP mode to mmgate and LMTP mode to the runner) post 1 KiB messages to the
list. The figure is posts accepted and queued per second; after each round
the ``in`` queue is counted, so every acknowledged post is shown to be on
disk. Each server runs alone in a child process, as it is shipped
(``mmgate serve``; ``runner --runner=lmtp``), started for each of its
rounds; the servers take their rounds in turn (engine.in_turn).

Both servers write a file per post, so the file system the home is on
decides much, and it is printed with the figures. The home is made on two:

* ``tmpdir``: the temporary directory (``TMPDIR``), whatever it is on;
* ``journaled``: an ext4 file system made as Debian's ``mkfs.ext4`` makes
  it (with a journal), in an image file in ``TMPDIR`` mounted on a loop
  device for the run, as a Mailman site's disk is; it needs root and loop
  devices, and is skipped, saying why, without them.

They differ where the temporary directory is on ext4 without a journal
(this project's test machines): there each new inode is checked against
those deleted in the last minute. A site's runners delete every queue file
they finish, so there that costs (docs/gateway.md); here no queue file is
deleted during the run (``clear`` moves each round's aside), so that one
round's cleanup does not slow the next round's server.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from benchmarks.engine import bench_parse, bench_parser, free_port, in_turn, smtp_source
from mmgate.mailman.embedded import ensure_home
from mmgate.mailman.local import LocalMailman, queue_directory


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start") from None
            time.sleep(0.1)


def load(port: int, messages: int, *, lmtp: bool) -> float:
    return smtp_source(
        port,
        sessions=16,
        messages=messages,
        length=1024,
        lmtp=lmtp,
        sender="alice@example.org",
        recipient="test@example.com",
    )


def queued(inq: Path) -> int:
    return sum(1 for name in os.listdir(inq) if name.endswith(".pck"))


def clear(inq: Path) -> None:
    """Empty the queue for the next round by moving its files aside, into a
    directory beside it on the same file system, removed with the home (not
    deleted: see the module's docstring)."""
    aside = Path(tempfile.mkdtemp(prefix="round-", dir=inq.parent))
    for name in os.listdir(inq):
        os.rename(inq / name, aside / name)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an operator stops it; killed if it does not go in 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def one_round(cmd: list[str], port: int, inq: Path, messages: int, *, lmtp: bool) -> float:
    """Start the server, warm it up, time ``messages`` posts, check that each
    is on disk, stop it; posts/s. Raises RuntimeError if any is missing."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        load(port, 200, lmtp=lmtp)  # warm up
        clear(inq)
        elapsed = load(port, messages, lmtp=lmtp)
        count = queued(inq)
        clear(inq)
    finally:
        stop(proc)
    if count != messages:
        raise RuntimeError(f"{count} of {messages} posts queued")
    return messages / elapsed


def bench_home(base: str | None = None) -> tuple[Path, Path, int, int, Path]:
    """A fresh Mailman home with one list, in ``base`` (None: ``TMPDIR``):
    (var, config, LMTP port, SMTP port, in queue)."""
    var = Path(tempfile.mkdtemp(prefix="mmgate-bench-", dir=base))
    atexit.register(shutil.rmtree, var, True)  # also when a round fails
    lmtp_port, smtp_port = free_port(), free_port()
    cfg = ensure_home(var, lmtp_port=lmtp_port, smtp_port=smtp_port, rest_port=free_port())
    mailman = LocalMailman(cfg)
    mailman.start()

    def create() -> None:
        from mailman.app.lifecycle import create_list
        from mailman.config import config
        from mailman.interfaces.domain import IDomainManager
        from zope.component import getUtility

        getUtility(IDomainManager).add("example.com")
        create_list("test@example.com")
        config.db.commit()

    mailman.call(create)
    return var, cfg, lmtp_port, smtp_port, queue_directory("in")


def file_system(path: Path) -> str:
    """The file system ``path`` is on, as the figures depend on it: its
    type, and for ext4 whether it has a journal (without one, each new
    inode is checked against those deleted in the last minute, so queue
    files cost more after many were removed)."""
    best, fstype, source = "", "unknown", ""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[4]
            tail = fields[fields.index("-") + 1 :]
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype, source = point, tail[0], tail[1]
    if fstype != "ext4":
        return fstype
    task = Path("/sys/fs/ext4", Path(source).name, "journal_task")
    try:
        journal = task.read_text().strip() != "<none>"
    except OSError:
        return "ext4"
    return "ext4 with a journal" if journal else "ext4 without a journal"


def serve_command(cfg: Path, var: Path, port: int, *extra: str) -> list[str]:
    """``mmgate serve`` on this home; its store (if any) in the same var dir."""
    return [
        sys.executable,
        "-m",
        "mmgate",
        "serve",
        "--mailman-config",
        str(cfg),
        "--var-dir",
        str(var),
        "--listen",
        f"127.0.0.1:{port}",
        "--no-api",
        *extra,
    ]


@contextmanager
def journaled_ext4() -> Iterator[str]:
    """A fresh ext4 with a journal (``mkfs.ext4``'s defaults), 2 GiB,
    mounted on a loop device for the run; unmounted and removed after it,
    also on failure. Raises RuntimeError, saying why, where it cannot be
    made."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        raise RuntimeError("needs root and mkfs.ext4 (apt-get install e2fsprogs)")
    work = Path(tempfile.mkdtemp(prefix="mmgate-bench-fs-"))
    image, point = work / "ext4.img", work / "mnt"
    point.mkdir()
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(2 << 30)
        for cmd in (
            ["mkfs.ext4", "-q", "-F", str(image)],
            ["mount", "-o", "loop", str(image), str(point)],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip()}")
        mounted = True
        yield str(point)
    finally:
        if mounted:
            subprocess.run(["umount", str(point)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = bench_parser("posts/s: mmgate vs Mailman's LMTP runner")
    parser.add_argument(
        "--file-system",
        choices=("tmpdir", "journaled", "both"),
        default="both",
        help="where the Mailman home is made (see the module's docstring)",
    )
    parser.add_argument("--home-in", help=argparse.SUPPRESS)  # one run, in a child
    args = bench_parse(parser)
    if args is None:
        return 2
    if args.home_in is None and args.file_system != "tmpdir":
        # Mailman's configuration is one per process: each home in a child.
        rates: dict[str, float] = {}
        for fs in ("tmpdir", "journaled") if args.file_system == "both" else ("journaled",):
            try:
                with contextlib.ExitStack() as stack:
                    base = "" if fs == "tmpdir" else stack.enter_context(journaled_ext4())
                    rates[fs] = run_child(base, args.quick)
            except RuntimeError as exc:
                print(f"{fs}: not measured: {exc}")
        for fs, ratio in rates.items():
            print(f"as shipped, Mailman home on {fs}: {ratio:.2f}x the LMTP runner (goal >= 8x)")
        return 0 if rates else 1
    measure_home(args.home_in or None, args.quick)
    return 0


def run_child(base: str, quick: bool) -> float:
    """One home's comparison in a child process; its ratio as shipped."""
    cmd = [sys.executable, "-m", "benchmarks.mailman", "--file-system", "tmpdir", "--home-in", base]
    done = subprocess.run(
        [*cmd, *(["--quick"] if quick else [])], stdout=subprocess.PIPE, text=True
    )
    out = done.stdout
    print(out.split("\n", 1)[1] if out.startswith("mmgate's") else out, end="")
    m = re.search(r"^mmgate vs the LMTP runner: ([\d.]+)x", out, re.M)
    if done.returncode != 0 or m is None:
        raise RuntimeError(f"the run failed (exit {done.returncode})")
    return float(m.group(1))


def measure_home(base: str | None, quick: bool) -> None:
    """Both servers on one home in ``base``, the figures printed (a parent
    reads the ratio from them: run_child)."""
    messages, repeat = (1000, 1) if quick else (5000, 3)
    var, cfg, lmtp_port, smtp_port, inq = bench_home(base)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; 16 connections, 1 KiB posts "
        f"to one list, {messages} per round, best of {repeat} rounds, the servers in turn "
        f"(each started for its round); Mailman home {var} "
        f"({file_system(var)})"
    )
    runner = str(Path(sys.executable).with_name("runner"))
    rounds_of = {
        "Mailman LMTP runner": partial(
            one_round, [runner, "-C", str(cfg), "--runner=lmtp:0:1"], lmtp_port, lmtp=True
        ),
        **{
            f"mmgate serve (spool {sync})": partial(
                one_round,
                serve_command(cfg, var, smtp_port, "--spool-sync", sync),
                smtp_port,
                lmtp=False,
            )
            for sync in ("batch", "file")
        },
    }
    rounds = in_turn(list(rounds_of), repeat, lambda name: rounds_of[name](inq, messages))
    for name, rates in rounds.items():
        print(
            f"{name:<28}{max(rates):>10.0f} posts/s   rounds: "
            f"{', '.join(f'{r:.0f}' for r in rates)}; all {messages} queued in each"
        )
    lmtp = max(rounds["Mailman LMTP runner"])
    batch, file = (max(rounds[f"mmgate serve (spool {sync})"]) for sync in ("batch", "file"))
    print(
        f"mmgate vs the LMTP runner: {batch / lmtp:.2f}x as shipped (one syncfs "
        f"per batch), {file / lmtp:.2f}x with an fsync per file as Mailman does "
        "(goal >= 8x as shipped)"
    )


if __name__ == "__main__":
    sys.exit(main())
