"""The results store on a PostgreSQL server (``--store postgresql://...``).

Why: SQLite's locking needs one machine's shared memory, so a store on a
network file system is not safe for array jobs that run on many hosts at
once.  A PostgreSQL database is the shared store for those: every host
connects to one server, and `Store` keeps exactly its SQLite semantics
(claims, heartbeats, stale takeover, ``--force``, preempted, done/failed,
series, final metrics, schema version, export, status).

This module is the dialect layer only; the store's logic and its SQL are
shared with the SQLite backend (`results/store.py`).  What differs:

* Placeholders: the shared SQL is written with ``?``; `Connection` turns
  them into psycopg's ``%s`` (so the shared SQL has no ``?`` or ``%``
  inside string literals).
* Writes: SQLite's ``BEGIN IMMEDIATE`` takes the database's write lock
  before the first read, so check-then-insert (`Store.claim`) is atomic.
  Here a write transaction (READ COMMITTED) first takes a transaction-level
  advisory lock keyed by the store's schema, which serializes the store's
  writers the same way; every statement after it sees all that earlier
  writers committed.  Reads are one REPEATABLE READ, READ ONLY snapshot,
  as SQLite's deferred ``BEGIN`` gives.  A lock wait longer than the
  connection's ``lock_timeout`` (`busy_timeout_ms`) counts as "busy" and is
  retried by `Store` with backoff up to `lock_timeout_s`, as on SQLite.
* Schema: a new database gets the tables of schema version `BASE_VERSION`
  at once (`SCHEMA`: SQLite's after its migrations 1-3, with 'preempted'
  allowed); the version is kept in the table ``mtrec_schema``.  Migrations
  after `BASE_VERSION` in `store._MIGRATIONS` run on both backends, so they
  are written in the shared SQL.
* Ids: ``BIGSERIAL``, read back with ``RETURNING id``.
* Errors: psycopg's errors are raised as `PostgresError`, a subclass of
  ``sqlite3.OperationalError``, so that the callers' existing handling of
  store errors (``sqlite3.Error``/``DatabaseError``) covers both backends.

The URL is libpq's (``postgresql://user@host:port/db``; a unix socket as
``postgresql://user@/db?host=/run/postgresql``); keep passwords out of it
(``~/.pgpass`` or ``$PGPASSWORD``), since the store's messages name it.  A
schema other than ``public`` is chosen with libpq's options, e.g.
``?options=-csearch_path%3Dmine``.  Needs psycopg 3:
``pip install 'mtrec-jax[postgres]'``.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from mtrec_jax.results.status import (DIVERGED, DONE, FAILED, PREEMPTED,
                                      RUNNING)

SCHEMES = ("postgresql", "postgres")
BASE_VERSION = 3  # the schema version `SCHEMA` creates

# Lock-wait timeout, serialization failure, deadlock: retried whole.
_BUSY_STATES = ("55P03", "40001", "40P01")
# First key of the writers' advisory lock (the second is the schema's).
_LOCK_KEY = 0x6D747263  # "mtrc"

_STATUSES = ", ".join(f"'{s}'" for s in (RUNNING, DONE, DIVERGED, FAILED,
                                         PREEMPTED))
SCHEMA = (
    "CREATE TABLE mtrec_schema (version INTEGER NOT NULL)",
    f"""CREATE TABLE runs (
         id BIGSERIAL PRIMARY KEY,
         experiment TEXT NOT NULL,
         run_name TEXT NOT NULL,
         config_hash TEXT NOT NULL,
         seed BIGINT NOT NULL,
         attempt INTEGER NOT NULL,
         status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
         superseded INTEGER NOT NULL DEFAULT 0,
         error TEXT,
         grid TEXT NOT NULL,
         config TEXT NOT NULL,
         git_commit TEXT,
         git_dirty INTEGER,
         packages TEXT,
         device_platform TEXT,
         device_kind TEXT,
         device_count INTEGER,
         process_count INTEGER,
         hostname TEXT NOT NULL,
         pid INTEGER NOT NULL,
         started_at DOUBLE PRECISION NOT NULL,
         heartbeat_at DOUBLE PRECISION NOT NULL,
         ended_at DOUBLE PRECISION,
         steps BIGINT,
         best_step BIGINT,
         wall_time_s DOUBLE PRECISION,
         result TEXT,
         config_hash_v1 TEXT,
         UNIQUE (experiment, config_hash, seed, attempt))""",
    "CREATE INDEX runs_by_key ON runs (experiment, config_hash, seed)",
    """CREATE TABLE series (
         run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
         source TEXT NOT NULL CHECK (source IN ('eval', 'train')),
         step BIGINT NOT NULL,
         key TEXT NOT NULL,
         value DOUBLE PRECISION,
         PRIMARY KEY (run_id, source, key, step))""",
    """CREATE TABLE final_metrics (
         run_id BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
         key TEXT NOT NULL,
         value DOUBLE PRECISION,
         PRIMARY KEY (run_id, key))""",
)
TABLES = ("runs", "series", "final_metrics")


def is_url(text: str) -> bool:
  """Whether a --store value names a PostgreSQL database."""
  return any(text.startswith(f"{s}://") for s in SCHEMES)


class PostgresError(sqlite3.OperationalError):
  """A PostgreSQL error from the results store (`sqlstate` is its code)."""

  def __init__(self, message: str, sqlstate: str | None = None):
    super().__init__(message)
    self.sqlstate = sqlstate


def _import():
  try:
    import psycopg
  except ImportError as e:
    raise ImportError("a PostgreSQL results store needs psycopg 3: pip "
                      "install 'mtrec-jax[postgres]' (or psycopg[binary])"
                      ) from e
  return psycopg


class Row(tuple):
  """A result row read by position or by column name, like sqlite3.Row."""

  def __new__(cls, names: dict[str, int], values: Iterable[Any]):
    row = super().__new__(cls, values)
    row._names = names
    return row

  def __getitem__(self, key):
    if isinstance(key, str):
      return tuple.__getitem__(self, self._names[key])
    return tuple.__getitem__(self, key)

  def keys(self) -> list[str]:
    return list(self._names)


def _row_factory(cursor):
  names = {c.name: i for i, c in enumerate(cursor.description or ())}
  return lambda values: Row(names, values)


def _sql(sql: str) -> str:
  return sql.replace("%", "%%").replace("?", "%s")


class Connection:
  """A psycopg connection that takes the shared SQL (``?`` placeholders)
  and answers like sqlite3's: `execute` returns the cursor, rows are `Row`s,
  errors are `PostgresError`s."""

  def __init__(self, url: str, lock_timeout_ms: int):
    psycopg = _import()
    self._psycopg = psycopg
    self.url = url
    try:
      self.raw = psycopg.connect(url, autocommit=True,
                                 row_factory=_row_factory,
                                 application_name="mtrec-jax")
    except psycopg.Error as e:
      raise PostgresError(
          f"cannot connect to the PostgreSQL results store {url}: "
          f"{str(e).strip()}; check that the server runs and the URL "
          f"(postgresql://user@host:port/db), or pass another --store "
          f"(or $MTREC_STORE)", getattr(e, "sqlstate", None)) from None
    self.execute(f"SET lock_timeout = {max(1, int(lock_timeout_ms))}")

  def _run(self, fn):
    try:
      return fn()
    except self._psycopg.Error as e:
      raise PostgresError(f"{type(e).__name__}: {str(e).strip()}",
                          getattr(e, "sqlstate", None)) from e

  def execute(self, sql: str, params: Iterable[Any] = ()):
    cur = self.raw.cursor()
    self._run(lambda: cur.execute(_sql(sql), tuple(params)))
    return cur

  def executemany(self, sql: str, seq: Iterable[Iterable[Any]]):
    cur = self.raw.cursor()
    rows = [tuple(p) for p in seq]
    if rows:
      self._run(lambda: cur.executemany(_sql(sql), rows))
    return cur

  @property
  def in_transaction(self) -> bool:
    return (self.raw.info.transaction_status !=
            self._psycopg.pq.TransactionStatus.IDLE)

  def close(self) -> None:
    self.raw.close()


class Dialect:
  """What `Store` does differently on PostgreSQL (see the module doc)."""

  name = "postgresql"

  def __init__(self, url: str, *, busy_timeout_ms: int, create: bool):
    self.conn = Connection(url, busy_timeout_ms)
    try:
      if not create and not self.has_schema(self.conn):
        raise FileNotFoundError(
            f"no results store in the PostgreSQL database {url} (it has no "
            f"mtrec tables); run `mtrec run ... --store {url}` first, or "
            f"pass another --store")
    except BaseException:
      self.conn.close()
      raise

  def begin(self, conn: Connection, write: bool) -> None:
    if write:
      conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
      conn.execute("SELECT pg_advisory_xact_lock(?, hashtext(coalesce("
                   "current_schema(), '')))",
                   (_LOCK_KEY,))
    else:
      conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

  @staticmethod
  def is_busy(e: BaseException) -> bool:
    return getattr(e, "sqlstate", None) in _BUSY_STATES

  @staticmethod
  def has_schema(conn: Connection) -> bool:
    # The catalog read with the statement's snapshot (to_regclass's cache
    # may not yet see a table that a writer before us just committed).
    return conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = "
        "'mtrec_schema' AND schemaname = current_schema()").fetchone()[0] > 0

  @staticmethod
  def version(conn: Connection) -> int:
    if not Dialect.has_schema(conn):
      return 0
    row = conn.execute("SELECT max(version) FROM mtrec_schema").fetchone()
    return row[0] or 0

  def create(self, conn: Connection, version: int) -> int:
    """Creates the tables of `BASE_VERSION` in an empty database (under the
    write lock); returns the version the store is at now."""
    if version:
      return version
    for statement in SCHEMA:
      conn.execute(statement)
    conn.execute("INSERT INTO mtrec_schema (version) VALUES (?)",
                 (BASE_VERSION,))
    return BASE_VERSION

  @staticmethod
  def set_version(conn: Connection, version: int) -> None:
    conn.execute("UPDATE mtrec_schema SET version = ?", (version,))

  @staticmethod
  def insert_id(conn: Connection, sql: str, params: tuple) -> int:
    return conn.execute(f"{sql} RETURNING id", params).fetchone()[0]

  def close(self) -> None:
    self.conn.close()


def to_sqlite(url: str, dest: sqlite3.Connection) -> None:
  """Copies every row of the store at `url` into `dest`, an empty SQLite
  store (the tables of the current schema version), from one consistent
  snapshot, keeping ids; what `mtrec store backup` writes for a PostgreSQL
  store."""
  conn = Connection(url, 30_000)
  try:
    if not Dialect.has_schema(conn):
      raise FileNotFoundError(f"no results store in the PostgreSQL database "
                              f"{url} (it has no mtrec tables)")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    version = Dialect.version(conn)
    dest.execute("BEGIN")
    for table in TABLES:
      columns = [r[1] for r in dest.execute(f"PRAGMA table_info({table})")]
      names = ", ".join(columns)
      cur = conn.execute(f"SELECT {names} FROM {table} ORDER BY 1")
      while batch := cur.fetchmany(5000):
        dest.executemany(f"INSERT INTO {table} ({names}) VALUES "
                         f"({', '.join('?' * len(columns))})",
                         [tuple(r) for r in batch])
    dest.execute(f"PRAGMA user_version = {int(version)}")
    dest.execute("COMMIT")
    conn.execute("COMMIT")
  finally:
    conn.close()
