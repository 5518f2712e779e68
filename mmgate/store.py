"""The store the SMTP side and the admin API share: counters, journal, pauses.

They are different processes (gunicorn workers; several mmgate hosts), so
what one writes and the other reads lives in a database, through SQLAlchemy
Core: SQLite under the var directory by default, any SQLAlchemy URL (such as
PostgreSQL) for several hosts. The SMTP side never waits on it: see
:class:`Recorder`, which batches writes on a thread of its own and keeps
mail flowing when the store is down.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

log = logging.getLogger("mmgate.store")

metadata = MetaData()
counters = Table(
    "mmgate_counters",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("total", Integer, nullable=False, default=0),
    Column("since_start", Integer, nullable=False, default=0),
)
journal = Table(
    "mmgate_journal",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("client", String(100)),
    Column("sender", String(600)),
    Column("size", Integer),
    Column("message_id", String(1000)),
    Column("queue_id", String(50)),
    Column("outcome", Integer, index=True),
    Column("reply", String(1000)),
    Column("lists", String(2000)),  # " list.id other.id " for filtering
    Column("recipients", Text),  # JSON
)
pauses = Table(
    "mmgate_pauses",
    metadata,
    Column("list_id", String(600), primary_key=True),
    Column("since", Float, nullable=False),
)
ratelimits = Table(
    "mmgate_ratelimit",
    metadata,
    Column("key", String(700), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
control = Table(
    "mmgate_control",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Float, nullable=False),
)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 5, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _wal(conn: Any, _: Any) -> None:  # readers never block the writer
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")

        self._schema_ready = False

    def _schema(self) -> None:
        """Create the tables on first use, not at construction: a store that is
        down when mmgate starts must not stop mail (the Recorder copes)."""
        if not self._schema_ready:
            metadata.create_all(self.engine)
            self._schema_ready = True

    def _begin(self) -> Any:
        self._schema()
        return self.engine.begin()

    def _connect(self) -> Any:
        self._schema()
        return self.engine.connect()

    # -- the SMTP side -----------------------------------------------------
    def apply(self, deltas: Mapping[str, int], entries: list[dict[str, Any]]) -> None:
        """Add counter deltas and journal entries, in one transaction."""
        with self._begin() as conn:
            for name, n in deltas.items():
                done = conn.execute(
                    update(counters)
                    .where(counters.c.name == name)
                    .values(total=counters.c.total + n, since_start=counters.c.since_start + n)
                )
                if done.rowcount == 0:
                    conn.execute(insert(counters).values(name=name, total=n, since_start=n))
            if entries:
                conn.execute(
                    insert(journal),
                    [{**e, "recipients": json.dumps(e["recipients"])} for e in entries],
                )

    def started(self) -> None:
        """A new SMTP process: counters 'since start' begin again."""
        with self._begin() as conn:
            conn.execute(update(counters).values(since_start=0))
            self._set(conn, "started_at", time.time())

    def prune(self, keep: int) -> None:
        """Bounded retention: only the newest ``keep`` journal entries stay."""
        with self._begin() as conn:
            newest = conn.execute(
                select(journal.c.id).order_by(journal.c.id.desc()).offset(keep).limit(1)
            ).scalar()
            if newest is not None:
                conn.execute(delete(journal).where(journal.c.id <= newest))

    def heartbeat(self) -> None:
        with self._begin() as conn:
            self._set(conn, "smtp_heartbeat", time.time())

    def take(self, key: str, capacity: float, per_second: float, now: float | None = None) -> bool:
        """Take one token from the bucket ``key`` (``capacity`` tokens, refilled
        at ``per_second``); False when it is empty.

        One conditional UPDATE does the refill and the take, so gateways
        sharing the store cannot both spend the last token.
        """
        now = time.time() if now is None else now
        refill = ratelimits.c.tokens + (now - ratelimits.c.updated) * per_second
        level = case((refill > capacity, capacity), else_=refill)
        for _ in range(2):
            with self._begin() as conn:
                taken = conn.execute(
                    update(ratelimits)
                    .where(ratelimits.c.key == key, level >= 1)
                    .values(tokens=level - 1, updated=now)
                ).rowcount
                if taken:
                    return True
                known = conn.execute(
                    select(ratelimits.c.key).where(ratelimits.c.key == key)
                ).first()
            if known is not None:
                return False
            try:
                with self._begin() as conn:
                    conn.execute(
                        insert(ratelimits).values(key=key, tokens=capacity - 1, updated=now)
                    )
                return True
            except IntegrityError:
                continue  # another gateway made it first: take from it
        return False

    # -- both sides --------------------------------------------------------
    def paused(self) -> dict[str, float]:
        with self._connect() as conn:
            return {row.list_id: row.since for row in conn.execute(select(pauses))}

    def set_paused(self, list_id: str, on: bool) -> float | None:
        with self._begin() as conn:
            if not on:
                conn.execute(delete(pauses).where(pauses.c.list_id == list_id))
                return None
            since = conn.execute(select(pauses.c.since).where(pauses.c.list_id == list_id)).scalar()
            if since is None:
                since = time.time()
                conn.execute(insert(pauses).values(list_id=list_id, since=since))
            return float(since)

    def request_refresh(self) -> float:
        with self._begin() as conn:
            return self._set(conn, "refresh_requested", time.time())

    def control_value(self, key: str) -> float | None:
        with self._connect() as conn:
            value = conn.execute(select(control.c.value).where(control.c.key == key)).scalar()
        return None if value is None else float(value)

    @staticmethod
    def _set(conn: Any, key: str, value: float) -> float:
        if (
            conn.execute(update(control).where(control.c.key == key).values(value=value)).rowcount
            == 0
        ):
            conn.execute(insert(control).values(key=key, value=value))
        return value

    # -- the API -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._connect() as conn:
            rows = list(conn.execute(select(counters)))
        return {
            "since_start": {r.name: r.since_start for r in rows},
            "total": {r.name: r.total for r in rows},
            "started_at": self.control_value("started_at"),
        }

    def messages(
        self, *, limit: int, offset: int, list_id: str | None = None, outcome: str | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        query = select(journal)
        if list_id is not None:
            query = query.where(journal.c.lists.like(f"% {list_id} %"))
        if outcome == "accepted":
            query = query.where(journal.c.outcome < 300)
        elif outcome == "temporary":
            query = query.where(journal.c.outcome.between(400, 499))
        elif outcome == "refused":
            query = query.where(journal.c.outcome >= 500)
        with self._connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar()
            rows = conn.execute(query.order_by(journal.c.id.desc()).limit(limit).offset(offset))
            entries = [
                {
                    "time": r.time,
                    "client": r.client,
                    "sender": r.sender,
                    "size": r.size,
                    "message_id": r.message_id,
                    "queue_id": r.queue_id,
                    "outcome": r.outcome,
                    "reply": r.reply,
                    "recipients": json.loads(r.recipients or "[]"),
                }
                for r in rows
            ]
        return int(total or 0), entries


class Recorder:
    """The SMTP side's end of the store: it never makes mail wait.

    Counting and journalling append to memory; a thread writes the batch
    every ``interval`` seconds in one transaction, reads the pauses and
    refresh requests, and beats the heart the API's health check reads. If
    the store is down, the batch is kept (up to ``max_pending`` entries, the
    oldest dropped beyond that) and mail goes on; the API shows the gap.
    """

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 0.5,
        retention: int = 10000,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.interval = interval
        self.retention = retention
        self._deltas: collections.Counter[str] = collections.Counter()
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_pending)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.paused: frozenset[str] = frozenset()
        self.refresh_requested: float = 0.0
        self.healthy = True
        self._flushes = 0

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:  # uncontended but for the flush's swap: ~0.1 us
            self._deltas[name] += n

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def start(self) -> None:
        try:
            self.store.started()
            self.poll()
        except Exception as exc:
            self._failed(exc)
        self._thread = threading.Thread(target=self._run, name="mmgate-store", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
            try:
                self.poll()
            except Exception as exc:
                self._failed(exc)

    def flush(self) -> None:
        with self._lock:
            deltas, self._deltas = self._deltas, collections.Counter()
            entries = list(self._entries)
            self._entries.clear()
        if not deltas and not entries:
            return
        try:
            self.store.apply(deltas, entries)
            self._flushes += 1
            if self._flushes % 100 == 0:
                self.store.prune(self.retention)
        except Exception as exc:
            self._failed(exc)
            with self._lock:  # keep them for the next try
                self._deltas.update(deltas)
                self._entries.extendleft(reversed(entries))
            return
        if not self.healthy:
            log.warning("store %s writable again", self.store.url)
            self.healthy = True

    def poll(self) -> None:
        self.paused = frozenset(self.store.paused())
        self.refresh_requested = self.store.control_value("refresh_requested") or 0.0
        self.store.heartbeat()

    def _failed(self, exc: Exception) -> None:
        if self.healthy:
            log.error("store %s unavailable, mail goes on: %s", self.store.url, exc)
        self.healthy = False


class PausedLists:
    """The lists paused in the store, for readers that keep no Recorder
    (``mmgate route``, ``mmgate debug``, the admin API's ``/v1/route``).

    Called as the router's ``paused``; the store is read at most every
    ``ttl`` seconds. A SQLite store that does not exist yet has no pauses
    and is not created by asking.
    """

    def __init__(self, url: str | None, *, ttl: float = 1.0) -> None:
        self.url = url
        self.ttl = ttl
        self._store: Store | None = None
        self._value: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def __call__(self) -> frozenset[str]:
        if self.url is None:
            return frozenset()
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            if self._store is None:
                if self.url.startswith("sqlite:///") and not os.path.exists(
                    self.url[len("sqlite:///") :]
                ):
                    return frozenset()
                self._store = Store(self.url)
            self._value = frozenset(self._store.paused())
            self._read_at = now
        return self._value
