"""The store the SMTP side and the admin API share: counters, journal, pauses.

They are different processes (gunicorn workers; several mmgate hosts), so
what one writes and the other reads lives in a database, through SQLAlchemy
Core: SQLite under the var directory by default, PostgreSQL (psycopg 3, in
SQLAlchemy's connection pool) for several gateways. The SMTP side never waits
on it: see :class:`Recorder`, which batches writes on a thread of its own and
keeps mail flowing when the store is down.

Gateways sharing a store are told apart by their host name (the one in their
greeting): each has its own counters and heartbeat, and its name on its
journal entries; pauses and rate-limit buckets are common to all.
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
    BigInteger,
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
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError

log = logging.getLogger("mmgate.store")

metadata = MetaData()
counters = Table(
    "mmgate_counts",
    metadata,
    Column("gateway", String(255), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("total", BigInteger, nullable=False, default=0),
    Column("since_start", BigInteger, nullable=False, default=0),
)
gateways = Table(
    "mmgate_gateways",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("started_at", Float),
    Column("heartbeat", Float),
)
# Free text is Text: PostgreSQL enforces a VARCHAR's length, and one long
# Message-ID must not make a whole batch fail.
journal = Table(
    "mmgate_journal",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("gateway", String(255)),
    Column("client", String(100)),
    Column("sender", Text),
    Column("size", BigInteger),
    Column("message_id", Text),
    Column("queue_id", String(50)),
    Column("outcome", Integer, index=True),
    Column("reply", Text),
    Column("lists", Text),  # " list.id other.id " for filtering
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

_schema_lock = threading.Lock()

#: A gateway whose heartbeat is older than this is down (it beats every
#: Recorder interval, half a second by default).
HEARTBEAT_FRESH = 5.0


def _clean(value: Any) -> Any:
    """PostgreSQL's text cannot hold NUL, which a client can put in a
    Message-ID; SQLite can. The journal is for people: make it visible."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _put(conn: Any, table: Table, key: dict[str, str], values: Mapping[str, float]) -> None:
    """Update the row with this key, or insert it: portable between SQLite
    and PostgreSQL. When two writers insert the same new row at once, the
    loser's savepoint is rolled back and it updates the winner's row."""
    where = [table.c[k] == v for k, v in key.items()]
    if conn.execute(update(table).where(*where).values(**values)).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**key, **values))
    except IntegrityError:
        conn.execute(update(table).where(*where).values(**values))


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        # pre-ping: a pooled connection to a database that restarted is
        # replaced before use, not handed out to fail once.
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 5, "check_same_thread": False}
        elif url.startswith("postgresql"):
            # a store that does not answer must fail fast: the API's health
            # check and the Recorder's next try both wait on it
            kwargs["connect_args"] = {"connect_timeout": 3}
            kwargs["pool_timeout"] = 5
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
        if self._schema_ready:
            return
        with _schema_lock:
            for attempt in range(3):
                try:
                    metadata.create_all(self.engine)
                    self._upgrade()
                    break
                except (OperationalError, ProgrammingError, IntegrityError):
                    # another gateway made the same table at the same moment
                    # (or the store is down: then the last try says so)
                    if attempt == 2:
                        raise
                    time.sleep(0.05)
            self._schema_ready = True

    def _upgrade(self) -> None:
        """Bring a store made by an earlier mmgate to this schema: one
        gateway's counters (``mmgate_counters``) become the unnamed gateway's,
        and the journal gains its ``gateway`` column."""
        names = inspect(self.engine)
        with self.engine.begin() as conn:
            if "gateway" not in {c["name"] for c in names.get_columns("mmgate_journal")}:
                conn.execute(text("ALTER TABLE mmgate_journal ADD COLUMN gateway VARCHAR(255)"))
            if names.has_table("mmgate_counters"):
                old = conn.execute(text("SELECT name, total FROM mmgate_counters")).all()
                if old:
                    conn.execute(
                        insert(counters),
                        [{"gateway": "", "name": n, "total": t, "since_start": 0} for n, t in old],
                    )
                conn.execute(text("DROP TABLE mmgate_counters"))

    def _begin(self) -> Any:
        self._schema()
        return self.engine.begin()

    def _connect(self) -> Any:
        self._schema()
        return self.engine.connect()

    # -- the SMTP side -----------------------------------------------------
    def apply(self, gateway: str, deltas: Mapping[str, int], entries: list[dict[str, Any]]) -> None:
        """Add a gateway's counter deltas and journal entries, in one
        transaction. Only this gateway writes its counter rows, so the
        update-else-insert cannot race with another."""
        with self._begin() as conn:
            for name, n in deltas.items():
                done = conn.execute(
                    update(counters)
                    .where(counters.c.gateway == gateway, counters.c.name == name)
                    .values(total=counters.c.total + n, since_start=counters.c.since_start + n)
                )
                if done.rowcount == 0:
                    conn.execute(
                        insert(counters).values(gateway=gateway, name=name, total=n, since_start=n)
                    )
            if entries:
                conn.execute(
                    insert(journal),
                    [
                        {
                            **{k: _clean(v) for k, v in e.items()},
                            "gateway": gateway,
                            "recipients": json.dumps(e["recipients"]),
                        }
                        for e in entries
                    ],
                )

    def started(self, gateway: str) -> None:
        """A gateway (re)starts: its counters 'since start' begin again."""
        now = time.time()
        with self._begin() as conn:
            conn.execute(
                update(counters).where(counters.c.gateway == gateway).values(since_start=0)
            )
            self._beat(conn, gateway, started_at=now, heartbeat=now)

    def prune(self, keep: int) -> None:
        """Bounded retention: only the newest ``keep`` journal entries stay."""
        with self._begin() as conn:
            newest = conn.execute(
                select(journal.c.id).order_by(journal.c.id.desc()).offset(keep).limit(1)
            ).scalar()
            if newest is not None:
                conn.execute(delete(journal).where(journal.c.id <= newest))

    def heartbeat(self, gateway: str) -> None:
        with self._begin() as conn:
            self._beat(conn, gateway, heartbeat=time.time())

    @staticmethod
    def _beat(conn: Any, gateway: str, **values: float) -> None:
        _put(conn, gateways, {"name": gateway}, values)

    def gateways(self) -> dict[str, dict[str, float | None]]:
        """Each gateway that ever wrote to this store: when it started, and
        how old its heartbeat is (None: never beat)."""
        with self._connect() as conn:
            return self._gateways(conn)

    @staticmethod
    def _gateways(conn: Any) -> dict[str, dict[str, float | None]]:
        now = time.time()
        rows = list(conn.execute(select(gateways)))
        return {
            r.name: {
                "started_at": r.started_at,
                "heartbeat_age": None if r.heartbeat is None else max(0.0, now - r.heartbeat),
            }
            for r in rows
        }

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
        _put(conn, control, {"key": key}, {"value": value})
        return value

    # -- the API -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Every gateway's counters summed, and each gateway's own."""
        with self._connect() as conn:  # one connection, one view of both tables
            rows = list(conn.execute(select(counters)))
            known = self._gateways(conn)
        since: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        each: dict[str, dict[str, Any]] = {}
        for name, info in known.items():
            each[name] = {**info, "since_start": {}, "total": {}}
        for r in rows:
            since[r.name] += r.since_start
            total[r.name] += r.total
            mine = each.setdefault(
                r.gateway,
                {"started_at": None, "heartbeat_age": None, "since_start": {}, "total": {}},
            )
            mine["since_start"][r.name] = r.since_start
            mine["total"][r.name] = r.total
        starts = [g["started_at"] for g in each.values() if g["started_at"] is not None]
        return {
            "since_start": dict(since),
            "total": dict(total),
            "started_at": max(starts) if starts else None,
            "gateways": each,
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
                    "gateway": r.gateway,
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
        gateway: str = "",
        interval: float = 0.5,
        retention: int = 10000,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        #: this gateway's name in a store that several share
        self.gateway = gateway
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
            self.store.started(self.gateway)
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
            self.store.apply(self.gateway, deltas, entries)
            self._flushes += 1
            if self._flushes % 100 == 0:
                self.store.prune(self.retention)
        except (DataError, IntegrityError) as exc:
            # The store answers but refuses this batch: retrying it would
            # refuse it for ever and hold back all that follows. Write what
            # can be written; name what cannot.
            log.error(
                "store %s refused a journal batch (%s); writing it one by one", self.store.url, exc
            )
            self._one_by_one(deltas, entries)
        except Exception as exc:
            self._failed(exc)
            with self._lock:  # the store is down: keep them for the next try
                self._deltas.update(deltas)
                self._entries.extendleft(reversed(entries))
            return
        if not self.healthy:
            log.warning("store %s writable again", self.store.url)
            self.healthy = True

    def _one_by_one(self, deltas: Mapping[str, int], entries: list[dict[str, Any]]) -> None:
        """Counters, then each entry alone; an entry the store refuses is
        dropped with a log line, and if the store goes down meanwhile the
        rest is kept for the next flush."""
        pending: list[tuple[Mapping[str, int], list[dict[str, Any]]]] = [(deltas, [])]
        pending += [({}, [e]) for e in entries]
        for i, (d, e) in enumerate(pending):
            try:
                self.store.apply(self.gateway, d, e)
            except (DataError, IntegrityError) as exc:
                what = f"journal entry for queue id {e[0].get('queue_id')}" if e else "counters"
                log.error("store %s: %s dropped: %s", self.store.url, what, exc)
            except Exception as exc:
                self._failed(exc)
                with self._lock:
                    for d2, _ in pending[i:]:
                        self._deltas.update(d2)
                    self._entries.extendleft(reversed([x for _, e2 in pending[i:] for x in e2]))
                return

    def poll(self) -> None:
        self.paused = frozenset(self.store.paused())
        self.refresh_requested = self.store.control_value("refresh_requested") or 0.0
        self.store.heartbeat(self.gateway)

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
