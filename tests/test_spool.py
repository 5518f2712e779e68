"""Queue files written by mmgate are Mailman's: read back by its own dequeue."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import weakref
from pathlib import Path

import pytest

from mmgate.mailman.spool import QueueWriter, queue_file
from tests.mailman_env import MailmanEnv


def entry(mm: MailmanEnv, directory: str, subject: str) -> object:
    from mailman.config import config
    from mailman.email.message import Message

    msg = Message()
    msg["Subject"] = subject
    msg.set_payload("body")
    return queue_file(
        directory,
        pickle.dumps(msg, pickle.HIGHEST_PROTOCOL),
        {"listid": "test.example.com", "to_list": True, "_volatile": 1},
        config.QFILE_SCHEMA_VERSION,
    )


@pytest.mark.parametrize("sync", ["batch", "file"])
def test_entries_are_read_back_by_mailmans_switchboard(mm: MailmanEnv, sync: str):
    from mailman.config import config

    inq = config.switchboards["in"].queue_directory
    writer = QueueWriter(sync)

    async def write_many() -> None:
        await asyncio.gather(*(writer.write([entry(mm, inq, f"n{i}")]) for i in range(20)))

    asyncio.run(write_many())
    got = mm.drain("in")
    assert sorted(str(msg["Subject"]) for msg, _ in got) == sorted(f"n{i}" for i in range(20))
    for _, msgdata in got:
        assert msgdata["listid"] == "test.example.com" and msgdata["to_list"] is True
        assert msgdata["version"] == config.QFILE_SCHEMA_VERSION
        assert "_volatile" not in msgdata
    assert not [n for n in os.listdir(inq) if n.endswith(".tmp")]


@pytest.mark.parametrize("sync", ["batch", "file"])
def test_a_failed_write_raises_and_leaves_nothing_behind(mm: MailmanEnv, tmp_path: Path, sync: str):
    from mailman.config import config

    good = config.switchboards["in"].queue_directory
    missing = str(tmp_path / "no-such-queue")
    writer = QueueWriter(sync)

    async def write() -> None:
        await writer.write([entry(mm, good, "first"), entry(mm, missing, "second")])

    with pytest.raises(FileNotFoundError):
        asyncio.run(write())
    assert mm.drain("in") == []  # all or none
    assert not [n for n in os.listdir(good) if n.endswith(".tmp")]


def test_unknown_sync_mode_is_refused():
    with pytest.raises(ValueError, match="sync must be"):
        QueueWriter("sometimes")


def test_the_writer_keeps_no_message_once_it_is_written(mm: MailmanEnv):
    """An idle writer thread must not hold its last batch: those are whole
    pickled messages, and memory would not come back after a large post."""
    from mailman.config import config

    writer = QueueWriter("batch")
    qf = entry(mm, config.switchboards["in"].queue_directory, "gone")
    gone = weakref.ref(qf)

    asyncio.run(writer.write([qf]))
    del qf
    gc.collect()
    assert gone() is None
    assert len(mm.drain("in")) == 1
