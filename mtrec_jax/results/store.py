"""The results store: one embedded SQLite file that many run processes share.

Every run of every experiment lands here: what ran (grid, full config, config
hash, seed, code and package versions, devices), how it went (status, error,
start/end times), the evaluation records over time, the final metrics and the
strategy's weights over time. The `mtrec` commands read it back to skip runs
already done, to show a sweep's progress and to export tables.

Why SQLite: it is in the standard library, it is one file to archive,
and with write-ahead logging (WAL) several processes on one machine can write
to it at once while readers never block. Each process opens its own `Store`
(a connection must not cross processes or threads). WAL needs the processes
to share memory, so the file must be on a local disk, not NFS.
Committed transactions sit in ``mtrec.db-wal`` until a checkpoint copies
them into ``mtrec.db``: `close` checkpoints, but after a killed process the
log may hold the latest runs, so copy a store with ``mtrec store backup
OUT`` (`results/backup.py`: one self-contained file, safe while runs write
to it), never by copying ``mtrec.db`` alone.

For array jobs on many hosts, where SQLite over a network file system is not
safe, the same store lives in a PostgreSQL database: ``--store
postgresql://user@host/db`` (or ``$MTREC_STORE``).  Both backends run this
module's code and SQL; `results/postgres.py` is the small dialect layer
(placeholders, write lock, schema creation, ids), `_SQLite` here the other.

Safety rules, kept by every method:

* Every write is one ``BEGIN IMMEDIATE`` transaction: it takes the write lock
  before reading, so "is this run free?" and "it is mine now" happen as one
  step across processes, and a crash rolls back whatever was half done.
  ``database is locked`` errors are retried with backoff up to a deadline.
* Only `finish` marks a run done, and it writes the result, the final
  metrics and the status in one transaction. A process that dies mid-run
  leaves its attempt ``running``; readers then see the owner is gone (dead
  pid on this host, or no heartbeat for `stale_after_s`) and report the run
  as failed, and the next `claim` takes it over as a new attempt.
* Attempts are never overwritten: a re-run (forced, or after a failure) adds
  a row with the next attempt number, so nothing is lost.

Schema (``PRAGMA user_version`` holds its version; `_MIGRATIONS` upgrades
older files in place, once, under the write lock):

* ``runs``: one row per attempt of (experiment, config_hash, seed).
  ``config_hash_v1`` keeps the hash a run was stored under before version 2
  (NULL for runs stored since).
* ``series``: long table of values over time, ``source`` ``eval`` (the
  records of ``metrics.jsonl``: ``val/<task>/<metric>``, ``weight/<task>``,
  ...) or ``train`` (the result's ``train_log``: weights, cosines, losses).
* ``final_metrics``: long table of a finished attempt's ``metrics``.

Values that are NaN or infinite are stored as NULL (None in Python).

Version 2 re-keys every stored run to the canonical run identity
(`config.config_hash` of its stored config: only the chosen model's fields,
only the listed auxiliary tasks).  Nothing else changes: every attempt, its
result, metrics and series stay; runs whose configs now share a hash (they
differed only in keys that cannot change a run) become attempts of one run,
numbered in the order they were stored, the latest done one being its result.
Version 3 re-keys them again for the keys added since (`ADDED_KEYS`:
optimizer.b1/b2, aux.next_all.softmax_impl, ...), each filled with the
default that computes what ran before it.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import pathlib
import random
import re
import socket
import sqlite3
import tempfile
import time
import warnings
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from mtrec_jax.results import postgres
from mtrec_jax.results import run_files
# The status words, and FINAL: the outcomes a run keeps (`claim` skips them
# unless forced); see results/status.py.
from mtrec_jax.results.status import (  # noqa: F401  (re-exported)
    DIVERGED, DONE, FAILED, FINAL, MISSING, PREEMPTED, RUNNING)
from mtrec_jax import config as config_lib


EXPORT_FORMATS = ("csv", "jsonl", "parquet")
SOURCES = ("eval", "train")  # the `series` table's kinds of records

SCHEMA_VERSION = 6


# Config keys added since runs were first stored, with the default each was
# added with, which computes what ran before the key existed: a stored
# config without one is hashed as if it held that default.  A new key that
# should keep the stored runs goes here, with a `_rekey()` migration.
ADDED_KEYS: dict[str, Any] = {
    "aux.next_all.num_negatives": 100,  # 797ac7e (the v1 HASHED_WHEN_CHANGED)
    "aux.next_all.head": "mlp",  # 3b65e68
    "aux.next_all.negatives": "uniform",  # 3b65e68
    "model.encoder.layout": "pre_ln",  # 3b65e68
    # Schema 3 (issue 15): Adam's betas, next_all's softmax.
    "optimizer.b1": 0.9,
    "optimizer.b2": 0.999,
    "aux.next_all.softmax_impl": "full",
    # Issue 13: rep mode's Gramian (rows is what rep mode computed before).
    "strategy.rep_gramian": "rows",
    # Schema 4 (issue 15): one encoder pass for the unmasked-sequence aux
    # tasks (separate passes are what ran before).
    "aux.next_all.shared_pass": False,
    # Schema 5 (issue 15): dropout's random bits (Threefry is what ran).
    "train.dropout_bits": "threefry",
    # Schema 6 (issue 15): the training step's XLA compile preset.
    "train.compiler": "default",
}


def _with_added_keys(config: dict, added: dict[str, Any]) -> dict:
  """A copy of a stored config with each `added` dotted key set to its value
  where the key's section exists and the key is missing."""
  config = json.loads(json.dumps(config))
  for key, default in added.items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf not in node:
      node[leaf] = default
  return config


def stored_config_hash(config: dict) -> str:
  """The config hash of a stored config (`ADDED_KEYS` filled in), as the
  current code computes it: what re-keys stores and result exports."""
  return config_lib.config_hash(_with_added_keys(config, ADDED_KEYS))


def _rekey(*, keep_column: str = "") -> Callable[[sqlite3.Connection], None]:
  """A migration that sets every run's config_hash to `stored_config_hash`
  of its stored config, as the current code computes it.

  This is how a new config key keeps the stored runs: its default in
  `ADDED_KEYS`, a migration ``N: (_rekey(),)`` and SCHEMA_VERSION bumped.
  `keep_column`: a new column that keeps each run's previous hash.

  Attempts of runs that now share (experiment, hash, seed) are renumbered
  in the order they were stored and `superseded` is recomputed (the latest
  done or diverged attempt is the run's result); no row is dropped, and
  results, metrics and series are kept as they are (the result JSON's
  config_hash follows the column).
  """
  def migrate(conn: sqlite3.Connection) -> None:
    if keep_column:
      conn.execute(f"ALTER TABLE runs ADD COLUMN {keep_column} TEXT")
    rows = conn.execute("SELECT id, experiment, seed, config_hash, config, "
                        "result FROM runs ORDER BY id").fetchall()
    updates, attempts = [], {}
    for r in rows:
      old = r["config_hash"]
      try:
        new = stored_config_hash(json.loads(r["config"]))
      except Exception as e:  # noqa: BLE001 (e.g. a model removed since)
        warnings.warn(f"results store: run {r['id']} ({r['experiment']}) "
                      f"keeps its config hash {old}: its stored config has "
                      f"no canonical identity here ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=2)
        new = old
      key = (r["experiment"], new, r["seed"])
      attempts[key] = attempts.get(key, 0) + 1
      result = r["result"]
      if result is not None:
        res = json.loads(result)
        if isinstance(res, dict) and "config_hash" in res:
          res["config_hash"] = new
          result = _dumps(res)
      updates.append((new, old, attempts[key], result, r["id"]))
    # Negative attempts first, so renumbering never meets the UNIQUE key.
    conn.execute("UPDATE runs SET attempt = -id")
    keep = f", {keep_column} = ?" if keep_column else ""
    conn.executemany(
        f"UPDATE runs SET config_hash = ?{keep}, attempt = ?, result = ? "
        f"WHERE id = ?", [(new, *((old,) if keep_column else ()), n, res, i)
                          for new, old, n, res, i in updates])
    conn.execute(f"UPDATE runs SET superseded = {_SUPERSEDED}", (DONE, DIVERGED))

  return migrate


# Whether an attempt is older than its run's latest done or diverged one
# (as 0/1 on both backends); takes (DONE, DIVERGED).
_SUPERSEDED = (
    "CAST((id < COALESCE((SELECT max(id) FROM runs AS r WHERE r.experiment = "
    "runs.experiment AND r.config_hash = runs.config_hash AND r.seed = "
    "runs.seed AND r.status IN (?, ?)), 0)) AS INTEGER)")

# Stores a series value, replacing the one stored for its (run, source,
# key, step) (SQLite >= 3.24 and PostgreSQL share this upsert).
_PUT_SERIES = ("INSERT INTO series (run_id, source, step, key, value) VALUES "
               "(?, ?, ?, ?, ?) ON CONFLICT (run_id, source, key, step) DO "
               "UPDATE SET value = excluded.value")

# version -> statements (SQL, or functions of the connection) that bring a
# store from version - 1 to version.  A PostgreSQL store starts at
# `postgres.BASE_VERSION` (3) with its own tables; later migrations run on
# both backends, so write them in the shared SQL (``?`` placeholders, no
# PRAGMA, ``INSERT ... ON CONFLICT``).
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None],
                             ...]] = {
    1: (
        """CREATE TABLE runs (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             experiment TEXT NOT NULL,
             run_name TEXT NOT NULL,
             config_hash TEXT NOT NULL,
             seed INTEGER NOT NULL,
             attempt INTEGER NOT NULL,
             status TEXT NOT NULL
               CHECK (status IN ('running', 'done', 'diverged', 'failed')),
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
             started_at REAL NOT NULL,
             heartbeat_at REAL NOT NULL,
             ended_at REAL,
             steps INTEGER,
             best_step INTEGER,
             wall_time_s REAL,
             result TEXT,
             UNIQUE (experiment, config_hash, seed, attempt))""",
        "CREATE INDEX runs_by_key ON runs (experiment, config_hash, seed)",
        """CREATE TABLE series (
             run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
             source TEXT NOT NULL CHECK (source IN ('eval', 'train')),
             step INTEGER NOT NULL,
             key TEXT NOT NULL,
             value REAL,
             PRIMARY KEY (run_id, source, key, step)) WITHOUT ROWID""",
        """CREATE TABLE final_metrics (
             run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
             key TEXT NOT NULL,
             value REAL,
             PRIMARY KEY (run_id, key)) WITHOUT ROWID""",
    ),
    # The canonical run identity (config.py): only the chosen model's fields
    # and the listed auxiliary tasks.
    2: (_rekey(keep_column="config_hash_v1"),),
    # optimizer.b1/b2, aux.next_all.softmax_impl, strategy.rep_gramian.
    3: (_rekey(),),
    # aux.next_all.shared_pass.
    4: (_rekey(),),
    # train.dropout_bits.
    5: (_rekey(),),
    # train.compiler.
    6: (_rekey(),),
}


class StoreLockedError(sqlite3.OperationalError):
  """The store stayed locked by other writers past the retry deadline."""


class RunStatus(NamedTuple):
  """One run's state as `Store.status` reports it."""
  run_name: str
  config_hash: str
  seed: int
  status: str  # done | running | diverged | failed | missing
  run_id: int | None  # the attempt the status describes; None when missing
  attempts: int
  detail: str  # why failed / who is running it; "" otherwise


# How long a running attempt's heartbeat may be silent before the attempt
# counts as abandoned (its host dead) and another process takes the run over;
# sweeps beat every `stale_after() / 5` s.  $MTREC_STALE_AFTER_S sets it: use
# one value for every process that shares a store.
DEFAULT_STALE_AFTER_S = 300.0


def stale_after(value: float | None = None) -> float:
  """`value`, else $MTREC_STALE_AFTER_S, else DEFAULT_STALE_AFTER_S."""
  if value is None:
    text = os.environ.get("MTREC_STALE_AFTER_S", "").strip()
    try:
      value = float(text) if text else DEFAULT_STALE_AFTER_S
    except ValueError:
      raise ValueError(f"MTREC_STALE_AFTER_S={text!r} is not a number of "
                       f"seconds; set e.g. MTREC_STALE_AFTER_S=300") from None
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"the heartbeat window (stale_after_s, "
                     f"$MTREC_STALE_AFTER_S) must be a positive number of "
                     f"seconds, got {value!r}")
  return float(value)


def default_store_path() -> pathlib.Path | str:
  """``$MTREC_STORE`` when set (a file path, or a PostgreSQL URL as a str),
  else ``./results/mtrec.db``."""
  env = os.environ.get("MTREC_STORE", "").strip()
  if "://" in env:  # a URL stays a str (`Store` refuses all but PostgreSQL)
    return env
  return pathlib.Path(env).expanduser() if env else pathlib.Path(
      "results", "mtrec.db")


def check_store_path(path: str | os.PathLike) -> pathlib.Path | str:
  """The store's file path, or its PostgreSQL URL (returned as the str).

  Any other URL is refused rather than taken for a relative path (which
  would create a local folder named e.g. ``mysql:``), and so is a URL that
  went through ``pathlib.Path`` (which turns ``//`` into ``/``).
  """
  text = os.fspath(path)
  if postgres.is_url(text):
    return text
  scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):/", text)
  if scheme:
    raise ValueError(
        f"results store {text!r} is a {scheme.group(1)} URL; a store is an "
        f"SQLite file path on a local disk (e.g. --store results/mtrec.db) "
        f"or a PostgreSQL URL, postgresql://user@host/db, passed as a str "
        f"(--store or $MTREC_STORE)")
  return pathlib.Path(text).expanduser()


def store_exists(path: str | os.PathLike) -> bool:
  """Whether a store is there to read: the file exists, or (PostgreSQL) the
  database holds the store's tables (an unreachable server raises)."""
  target = check_store_path(path)
  if isinstance(target, pathlib.Path):
    return target.exists()
  conn = postgres.Connection(target, 5_000)
  try:
    return postgres.Dialect.has_schema(conn)
  finally:
    conn.close()


def store_arg(text: str) -> pathlib.Path | str:
  """`check_store_path` as an argparse type (its error is argparse's)."""
  import argparse
  try:
    return check_store_path(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------- values


_plain = run_files.plain  # the package's one JSON sanitiser


def _dumps(x: Any) -> str:
  return json.dumps(_plain(x), sort_keys=True, allow_nan=False)


def _number(x: Any) -> tuple[bool, float | None]:
  """(is numeric, value or None for NaN/inf/None)."""
  if x is None:
    return True, None
  if isinstance(x, str) or not hasattr(x, "__float__"):
    return False, None
  try:
    v = float(x)
  except (TypeError, ValueError):
    return False, None
  return True, (v if math.isfinite(v) else None)


def _long_rows(record: dict, skip: Iterable[str] = ()) -> list[tuple]:
  """(key, value) pairs of a record's numeric entries.

  Non-numeric entries are left out of the long tables rather than failing:
  losing a finished run over a stray string would be worse; the full record
  is kept in the result JSON anyway.
  """
  skip = set(skip)
  rows = []
  for k, v in record.items():
    ok, value = _number(v)
    if k not in skip and ok:
      rows.append((str(k), value))
  return rows


def _step(record: dict, what: str) -> int:
  if "step" not in record:
    raise ValueError(f"{what} has no 'step' entry; every record over time "
                     f"needs its training step, e.g. {{'step': 100, ...}}")
  return int(record["step"])


def _check_source(source: str) -> None:
  if source not in SOURCES:
    raise ValueError(f"unknown series source {source!r}; use 'eval' (eval "
                     f"records) or 'train' (the result's train_log)")


def _iso(t: float | None) -> str | None:
  if t is None:
    return None
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
      timespec="seconds")


def _pid_alive(pid: int) -> bool:
  """Whether a process with this pid exists here (zombies count as gone)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  except OSError:
    return True
  try:  # Linux: a killed child that was not reaped yet is a zombie
    with open(f"/proc/{pid}/stat") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")
  except (OSError, IndexError):
    return True


def _provenance_columns(p: dict) -> dict[str, Any]:
  """Columns from a provenance dict ({git, packages, devices}), or a result."""
  git = p.get("git") or {}
  dev = p.get("devices") or {}
  out = {}
  if git:
    out["git_commit"] = git.get("commit")
    dirty = git.get("dirty")
    out["git_dirty"] = None if dirty is None else int(bool(dirty))
  if p.get("packages") is not None:
    out["packages"] = _dumps(p["packages"])
  if dev:
    out.update(device_platform=dev.get("platform"),
               device_kind=dev.get("kind"), device_count=dev.get("count"),
               process_count=dev.get("process_count"))
  return out


def stored_data_hash(row: sqlite3.Row) -> str | None:
  """The ``data.hash`` of an attempt's stored result; None when unknown."""
  if row["result"] is None:
    return None
  try:
    data = json.loads(row["result"]).get("data")
  except (ValueError, AttributeError):
    return None
  return data.get("hash") if isinstance(data, dict) else None


def _same_data(row: sqlite3.Row, data_hash: str | None) -> bool:
  """Whether a stored attempt ran on the data `data_hash` names (unknown
  on either side counts as the same: see `Store.claim`)."""
  stored = stored_data_hash(row)
  return stored is None or data_hash is None or stored == data_hash


def _check_not_empty(path: pathlib.Path, create: bool) -> None:
  """A missing store is an error when `create` is False; an existing 0-byte
  file with no write-ahead log (a copy that missed its data, a truncated
  file) is an error for a reader and a warning for a writer, rather than a
  store silently read as empty."""
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    if not create:
      raise FileNotFoundError(
          f"no results store at {path}; pass --store PATH (or set "
          f"$MTREC_STORE) to an existing store") from None
    return
  wal = pathlib.Path(f"{path}-wal")
  if size or (wal.exists() and wal.stat().st_size):
    return
  message = (f"results store {path} is an empty (0-byte) file, so it holds no "
             f"runs; if it is a copy of a store, the copy missed the data "
             f"(copy a live store with `mtrec store backup OUT`, which makes "
             f"one self-contained file); else delete it")
  if not create:
    raise ValueError(message)
  warnings.warn(message, RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------------- store


class _SQLite:
  """What `Store` does on its embedded default backend, an SQLite file in
  WAL mode (see the module doc; `postgres.Dialect` is the other)."""

  name = "sqlite"

  def __init__(self, path: pathlib.Path, *, busy_timeout_ms: int,
               create: bool, retry: Callable[[Callable[[], Any]], Any]):
    _check_not_empty(path, create)
    path.parent.mkdir(parents=True, exist_ok=True)
    self.path = path
    self.conn = sqlite3.connect(path, isolation_level=None,
                                timeout=busy_timeout_ms / 1000)
    self.conn.row_factory = sqlite3.Row
    try:
      self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
      self.conn.execute("PRAGMA foreign_keys = ON")
      mode = retry(
          lambda: self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
      if str(mode).lower() != "wal":
        warnings.warn(f"results store {path}: SQLite could not switch to "
                      f"WAL mode (got {mode!r}); concurrent writers will be "
                      f"slow and readers may block. Put the store on a local "
                      f"disk.", RuntimeWarning, stacklevel=3)
      # WAL + NORMAL: a crash of the process loses nothing committed; a power
      # cut may lose the last commits but never corrupts the file.
      self.conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
      self.conn.close()
      raise

  @staticmethod
  def begin(conn: sqlite3.Connection, write: bool) -> None:
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

  @staticmethod
  def is_busy(e: BaseException) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg

  @staticmethod
  def version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]

  @staticmethod
  def create(conn: sqlite3.Connection, version: int) -> int:
    return version  # `_MIGRATIONS` from 1 make the tables

  @staticmethod
  def set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {int(version)}")

  @staticmethod
  def insert_id(conn: sqlite3.Connection, sql: str, params: tuple) -> int:
    return conn.execute(sql, params).lastrowid

  def close(self) -> None:
    """Closes the connection, first copying the committed transactions of
    the write-ahead log into the main file (a passive checkpoint: it never
    waits), so that a store no process holds open is whole in its one file."""
    try:
      self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error:
      pass  # the next clean close (or SQLite's last-close one) copies it
    self.conn.close()


class Store:
  """A connection to the results store; one per process (and thread).

  `path`: an SQLite file, or a PostgreSQL URL (``postgresql://...``, a str)
  for a store shared by many hosts; both behave the same.
  `busy_timeout_ms` is how long the database itself waits for a lock; on top
  of it, each transaction is retried with growing, jittered sleeps until
  `lock_timeout_s` has passed, then `StoreLockedError` is raised.
  `stale_after_s`: a running attempt whose heartbeat is older counts as
  abandoned even if its host is another machine (call `heartbeat` or
  `log_eval` more often than this); default `stale_after()`.
  `create`: False for readers: a missing store is then a FileNotFoundError
  and a 0-byte file a ValueError (a writer only warns about the latter).
  """

  def __init__(self, path: str | os.PathLike | None = None, *,
               busy_timeout_ms: int = 5_000, lock_timeout_s: float = 120.0,
               stale_after_s: float | None = None, create: bool = True):
    self.path = check_store_path(path if path is not None
                                 else default_store_path())
    self.lock_timeout_s = float(lock_timeout_s)
    self.stale_after_s = stale_after(stale_after_s)
    self.busy_retries = 0  # retries after "database is locked", for logs/tests
    self._host = socket.gethostname()
    self._db: _SQLite | postgres.Dialect | None = None
    if isinstance(self.path, str):
      self._db = postgres.Dialect(self.path, busy_timeout_ms=busy_timeout_ms,
                                  create=create)
    else:
      self._db = _SQLite(self.path, busy_timeout_ms=busy_timeout_ms,
                         create=create, retry=self._retry)
    try:
      self._migrate()
    except BaseException:
      self.close()
      raise

  # -- plumbing

  @property
  def backend(self) -> str:
    """'sqlite' or 'postgresql'."""
    return self._dialect.name

  @property
  def _dialect(self) -> _SQLite | postgres.Dialect:
    if self._db is None:
      raise ValueError(f"results store {self.path} is closed; open a new "
                       f"Store(path)")
    return self._db

  def close(self) -> None:
    """Closes the connection (SQLite: after a passive WAL checkpoint)."""
    if self._db is not None:
      self._db.close()
      self._db = None

  def __enter__(self) -> Store:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @property
  def conn(self):
    """The open connection (ad-hoc read queries, ``?`` placeholders on both
    backends; writes go through methods)."""
    return self._dialect.conn

  def _retry(self, fn: Callable[[], Any]) -> Any:
    """Calls `fn` until it stops failing with 'database is locked' (or on
    PostgreSQL a lock wait past `busy_timeout_ms`)."""
    deadline = time.monotonic() + self.lock_timeout_s
    delay = 0.005
    while True:
      try:
        return fn()
      except sqlite3.OperationalError as e:
        if not (self._db or _SQLite).is_busy(e):
          raise
        if time.monotonic() >= deadline:
          raise StoreLockedError(
              f"results store {self.path} stayed locked for "
              f"{self.lock_timeout_s:g}s ({self.busy_retries} retries): "
              f"another process holds a long transaction. Retry later, or "
              f"raise Store(lock_timeout_s=...)") from e
        self.busy_retries += 1
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)

  def _transaction(self, fn: Callable[[Any], Any], *, write: bool) -> Any:
    """Runs `fn(conn)` in one transaction, retried whole when locked.

    Writes take the store's write lock before the first read (SQLite:
    BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so check-then-insert is
    atomic across processes; reads get one consistent snapshot.
    """
    conn, db = self.conn, self._dialect

    def attempt():
      try:
        db.begin(conn, write)  # PostgreSQL: its lock wait may time out
        out = fn(conn)
        conn.execute("COMMIT")
        return out
      except BaseException:
        if conn.in_transaction:
          conn.execute("ROLLBACK")
        raise

    return self._retry(attempt)

  def _migrate(self) -> None:
    db = self._dialect

    def check(v):
      if v > SCHEMA_VERSION:
        raise ValueError(
            f"results store {self.path} has schema version {v}, newer than "
            f"this mtrec-jax understands ({SCHEMA_VERSION}); upgrade mtrec-jax "
            f"or use another store (--store PATH or MTREC_STORE)")

    current = self._retry(lambda: db.version(self.conn))
    check(current)
    if current == SCHEMA_VERSION:
      self._allow_preempted()
      return

    def upgrade(conn):
      v = db.version(conn)  # again, under the lock: another process may have won
      check(v)
      v = db.create(conn, v)
      for target in range(v + 1, SCHEMA_VERSION + 1):
        for statement in _MIGRATIONS[target]:
          if callable(statement):
            statement(conn)
          else:
            conn.execute(statement)
      db.set_version(conn, SCHEMA_VERSION)

    self._transaction(upgrade, write=True)
    self._allow_preempted()

  def _allow_preempted(self) -> None:
    """Adds 'preempted' to the runs table's status CHECK (issue 16), in
    place: a compatible change (code without it reads such an attempt as a
    finished, not final one and claims the run again), so no schema version;
    SQLite's documented way to change a CHECK (writable_schema).  A
    PostgreSQL store has it from the start."""
    if self.backend != "sqlite":
      return

    def sql(conn):
      return conn.execute("SELECT sql FROM sqlite_master WHERE type = "
                          "'table' AND name = 'runs'").fetchone()[0]

    if f"'{PREEMPTED}'" in self._retry(lambda: sql(self.conn)):
      return

    def extend(conn):
      old = sql(conn)
      if f"'{PREEMPTED}'" in old:
        return  # another process did it
      new = old.replace(f"'{FAILED}')", f"'{FAILED}', '{PREEMPTED}')")
      if new == old:
        raise ValueError(f"results store {self.path}: its runs table has "
                         f"an unexpected status CHECK; cannot add "
                         f"{PREEMPTED!r}")
      v = conn.execute("PRAGMA schema_version").fetchone()[0]
      conn.execute("PRAGMA writable_schema = ON")
      try:
        conn.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' "
                     "AND name = 'runs'", (new,))
        conn.execute(f"PRAGMA schema_version = {v + 1}")
      finally:
        conn.execute("PRAGMA writable_schema = OFF")

    self._transaction(extend, write=True)

  def _row(self, conn, run_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
      raise ValueError(f"results store {self.path} has no run with id "
                       f"{run_id}; use the id that claim() returned")
    return row

  def _owner(self, row: sqlite3.Row, now: float) -> tuple[bool, str]:
    """(alive, why) for a running attempt's owning process."""
    age = now - row["heartbeat_at"]
    if age > self.stale_after_s:
      return False, (f"stale: no heartbeat for {age:.0f}s from pid "
                     f"{row['pid']} on {row['hostname']}")
    if row["hostname"] == self._host and not _pid_alive(row["pid"]):
      return False, (f"process gone: pid {row['pid']} on this host "
                     f"({row['hostname']}) no longer exists")
    return True, f"pid {row['pid']} on {row['hostname']}"

  def _resolve(self, attempts: Sequence[sqlite3.Row], now: float):
    """(status row, result row, status, detail) of one run's attempts.

    The status describes what is happening (a live attempt wins); the result
    row is "the" result: the latest attempt that ended done or diverged, else
    the latest attempt.
    """
    active = [r for r in attempts if not r["superseded"]] or list(attempts)
    final = [r for r in active if r["status"] in FINAL]
    result_row = final[-1] if final else active[-1]
    for r in reversed(active):
      if r["status"] == RUNNING:
        alive, why = self._owner(r, now)
        if alive:
          return r, result_row, RUNNING, why
    status, detail = self._own_status(result_row, now)
    if status in (FAILED, DIVERGED, PREEMPTED) and not detail:
      detail = result_row["error"] or ""
    return result_row, result_row, status, detail

  def _own_status(self, row: sqlite3.Row, now: float) -> tuple[str, str]:
    """(status, detail) of one attempt on its own; a dead owner -> failed."""
    if row["status"] != RUNNING:
      return row["status"], ""
    alive, why = self._owner(row, now)
    return (RUNNING, why) if alive else (FAILED, why)

  def _grouped(self, conn, experiment: str) -> dict[tuple, list[sqlite3.Row]]:
    """Attempts by (config_hash, seed), in the order runs were first stored."""
    groups: dict[tuple, list[sqlite3.Row]] = {}
    for r in conn.execute("SELECT * FROM runs WHERE experiment = ? ORDER BY id",
                          (experiment,)):
      groups.setdefault((r["config_hash"], r["seed"]), []).append(r)
    return groups

  # -- writing

  def claim(self, experiment: str, run_name: str, grid: dict, config: Any,
            config_hash: str, seed: int, provenance: dict | None = None, *,
            force: bool = False, data_hash: str | None = None) -> int | None:
    """Starts a new attempt of a run and returns its id, or None to skip it.

    `data_hash`: the content hash of the run's source data
    (`data.identity`; None when the config alone determines the data).  A
    run's identity is (experiment, config hash, seed, data): a stored final
    attempt counts only when its result's ``data.hash`` is this one, so a
    run on changed data (or a divergence on bad data) never stands for the
    run on the data now; the new attempt then supersedes it when it ends.
    A stored result with no data hash (stored before data identity existed,
    or from a trainer that records none) counts as on the current data:
    such runs were made from the files that are there, as far as anyone
    knows, and re-running a whole store after this upgrade would cost days.

    Skipped when the run (same experiment, config hash and seed) already
    ended done or diverged, or when another live process is running it,
    unless `force`: then a live attempt is marked failed ("taken over") and
    its owner can no longer finish it (`finish` refuses).  Attempts whose
    owner is gone are marked failed and taken over; preempted ones are
    claimed at once.
    """
    grid_json, config_json = _dumps(grid), _dumps(config)
    prov = _provenance_columns(provenance or {})
    seed = int(seed)

    def fn(conn):
      now = time.time()
      attempts = conn.execute(
          "SELECT * FROM runs WHERE experiment = ? AND config_hash = ? AND "
          "seed = ? ORDER BY id", (experiment, config_hash, seed)).fetchall()
      gone = []
      for r in attempts:
        if r["status"] != RUNNING:
          continue
        alive, why = self._owner(r, now)
        if alive and not r["superseded"]:
          if not force:
            return None
          gone.append((r, f"forced while alive: {why}"))
        elif not alive:
          gone.append((r, f"abandoned: {why}"))
      if not force and any(r["status"] in FINAL and not r["superseded"] and
                           _same_data(r, data_hash) for r in attempts):
        return None
      attempt = max((r["attempt"] for r in attempts), default=0) + 1
      for r, why in gone:
        conn.execute(
            "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE id = ? "
            "AND status = ?", (FAILED, f"{why}; taken over by attempt "
                               f"{attempt}", now, r["id"], RUNNING))
      columns = dict(experiment=experiment, run_name=run_name,
                     config_hash=config_hash, seed=seed, attempt=attempt,
                     status=RUNNING, grid=grid_json, config=config_json,
                     hostname=self._host, pid=os.getpid(), started_at=now,
                     heartbeat_at=now, **prov)
      return self._dialect.insert_id(
          conn, f"INSERT INTO runs ({', '.join(columns)}) VALUES "
          f"({', '.join('?' * len(columns))})", tuple(columns.values()))

    return self._transaction(fn, write=True)

  def heartbeat(self, run_id: int) -> None:
    """Tells other processes this attempt's owner is still at work."""
    def fn(conn):
      if not conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?",
                          (time.time(), run_id)).rowcount:
        self._row(conn, run_id)  # raises: no such run

    self._transaction(fn, write=True)

  def log_eval(self, run_id: int, record: dict) -> None:
    """Stores one evaluation record ({step, key: value, ...}); a heartbeat too.

    Logging the same step again replaces its values (safe to repeat).
    """
    step = _step(record, "eval record")
    rows = [(run_id, "eval", step, k, v)
            for k, v in _long_rows(record, ["step"])]

    def fn(conn):
      self._row(conn, run_id)
      conn.executemany(_PUT_SERIES, rows)
      conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?",
                    (time.time(), run_id))

    self._transaction(fn, write=True)

  def finish(self, run_id: int, result: dict,
             evals: Iterable[dict] | None = None) -> None:
    """Stores a run's result; the only way an attempt becomes done.

    One transaction writes the final metrics, the train log, `evals` (eval
    records not sent with `log_eval`, e.g. read back from ``metrics.jsonl``),
    the full result JSON, status, error and end time, so readers see all of
    it or none of it. A done or diverged attempt supersedes older ones.
    """
    status = result.get("status")
    if status not in (DONE, DIVERGED, FAILED):
      raise ValueError(f"result status {status!r} cannot finish a run; it "
                       f"must be one of {DONE}, {DIVERGED}, {FAILED}")
    metrics = _long_rows(result.get("metrics") or {})
    series = []
    for source, records in (("train", result.get("train_log") or ()),
                            ("eval", evals or ())):
      for rec in records:
        step = _step(rec, f"{source} record")
        series += [(run_id, source, step, k, v)
                   for k, v in _long_rows(rec, ["step"])]
    result_json = _dumps(result)
    prov = _provenance_columns(result)
    num = lambda k: _number(result.get(k))[1]  # noqa: E731

    def fn(conn):
      now = time.time()
      row = self._row(conn, run_id)
      if row["status"] in FINAL:
        raise ValueError(
            f"run {run_id} ({row['run_name']}) already ended {row['status']}; "
            f"claim a new attempt with force=True to run it again")
      self._check_not_taken_over(conn, row)
      for key, want in (("config_hash", row["config_hash"]),
                        ("seed", row["seed"])):
        if result.get(key) is not None and result[key] != want:
          raise ValueError(
              f"result {key} {result[key]!r} does not match run {run_id}'s "
              f"{want!r}; finish() got the result of another run")
      conn.execute("DELETE FROM final_metrics WHERE run_id = ?", (run_id,))
      conn.execute("DELETE FROM series WHERE run_id = ? AND source = 'train'",
                   (run_id,))
      conn.executemany("INSERT INTO final_metrics (run_id, key, value) "
                       "VALUES (?, ?, ?)", [(run_id, k, v) for k, v in metrics])
      conn.executemany(_PUT_SERIES, series)
      columns = dict(status=status, error=result.get("error"), ended_at=now,
                     heartbeat_at=now, result=result_json,
                     steps=num("steps"), best_step=num("best_step"),
                     wall_time_s=num("wall_time_s"), **prov)
      for k in ("steps", "best_step"):
        columns[k] = None if columns[k] is None else int(columns[k])
      conn.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in columns)} "
                   f"WHERE id = ?", (*columns.values(), run_id))
      # Older attempts than the latest done/diverged one are superseded.
      conn.execute(
          f"UPDATE runs SET superseded = {_SUPERSEDED} WHERE experiment = ? "
          f"AND config_hash = ? AND seed = ?",
          (DONE, DIVERGED, row["experiment"], row["config_hash"], row["seed"]))

    self._transaction(fn, write=True)

  def preempt(self, run_id: int, error: str) -> None:
    """Marks an attempt preempted (it stopped on a signal after writing a
    checkpoint); the next `claim` takes the run at once, on any host."""
    self._end(run_id, PREEMPTED, error)

  def fail(self, run_id: int, error: str) -> None:
    """Marks an attempt failed (an exception the caller caught)."""
    self._end(run_id, FAILED, error)

  def _end(self, run_id: int, status: str, error: str) -> None:
    def fn(conn):
      row = self._row(conn, run_id)
      if row["status"] in FINAL:
        raise ValueError(f"run {run_id} ({row['run_name']}) already ended "
                         f"{row['status']}; it cannot be {status} now")
      self._check_not_taken_over(conn, row)
      now = time.time()
      conn.execute("UPDATE runs SET status = ?, error = ?, ended_at = ?, "
                   "heartbeat_at = ? WHERE id = ?",
                   (status, str(error), now, now, run_id))

    self._transaction(fn, write=True)

  def _check_not_taken_over(self, conn, row: sqlite3.Row) -> None:
    """Raises when a later attempt of the run took this one over: its owner
    (a process thought dead, or one a --force replaced) must not record."""
    later = conn.execute(
        "SELECT attempt FROM runs WHERE experiment = ? AND config_hash = ? "
        "AND seed = ? AND id > ? ORDER BY id LIMIT 1",
        (row["experiment"], row["config_hash"], row["seed"], row["id"])
    ).fetchone()
    if row["status"] != RUNNING and later is not None:
      raise ValueError(
          f"run {row['id']} ({row['run_name']}, attempt {row['attempt']}) "
          f"was taken over by attempt {later[0]} ({row['error']}); this "
          f"process's outcome is not stored")

  # -- reading

  def _result_dict(self, row: sqlite3.Row, status: str, detail: str) -> dict:
    if row["result"] is not None:
      out = json.loads(row["result"])
    else:  # never finished: what the store knows from claim()
      out = {"experiment": row["experiment"], "grid": json.loads(row["grid"]),
             "seed": row["seed"], "config_hash": row["config_hash"],
             "git": {"commit": row["git_commit"],
                     "dirty": None if row["git_dirty"] is None
                     else bool(row["git_dirty"])},
             "metrics": {}}
    out.setdefault("config", json.loads(row["config"]))
    out.update(run_id=row["id"], run_name=row["run_name"],
               attempt=row["attempt"], superseded=bool(row["superseded"]),
               status=status, started_at=row["started_at"],
               ended_at=row["ended_at"])
    if status in (FAILED, DIVERGED, PREEMPTED):
      out["error"] = row["error"] or detail or None
    return out

  def results(self, experiment: str, latest_only: bool = True) -> list[dict]:
    """The stored result dicts of an experiment, in the order first run.

    One per (config_hash, seed) with `latest_only`: the latest done or
    diverged attempt, else the latest attempt (a failed or running one, as
    a dict with empty metrics if it never finished). Otherwise every attempt.
    Each dict is the JSON given to `finish` plus run_id, run_name, attempt,
    superseded, status, started_at, ended_at and config.
    """
    def fn(conn):
      now = time.time()
      out = []
      for attempts in self._grouped(conn, experiment).values():
        rows = [self._resolve(attempts, now)[1]] if latest_only else attempts
        for r in rows:
          out.append(self._result_dict(r, *self._own_status(r, now)))
      return out

    return self._transaction(fn, write=False)

  def status(self, experiment: str,
             expected_runs: Iterable[tuple[str, str, int]] | None = None,
             ) -> list[RunStatus]:
    """done / running / diverged / failed / missing for each run.

    `expected_runs` ((run_name, config_hash, seed), e.g. an experiment's
    grid) gives the rows and their order, and runs never stored show as
    missing; without it, every run stored for the experiment is listed.
    A running attempt whose owner is gone shows as failed, with the reason.
    """
    def fn(conn):
      now = time.time()
      groups = self._grouped(conn, experiment)
      if expected_runs is None:
        wanted = [(a[-1]["run_name"], h, s) for (h, s), a in groups.items()]
      else:
        wanted = [(n, h, int(s)) for n, h, s in expected_runs]
      out = []
      for name, h, s in wanted:
        attempts = groups.get((h, s))
        if not attempts:
          out.append(RunStatus(name, h, s, MISSING, None, 0, ""))
          continue
        row, _, status, detail = self._resolve(attempts, now)
        out.append(RunStatus(name, h, s, status, row["id"], len(attempts),
                             detail))
      return out

    return self._transaction(fn, write=False)

  def eval_history(self, run_id: int, source: str = "eval") -> list[dict]:
    """An attempt's records over time, [{step, key: value, ...}] by step.

    `source` "eval": the evaluation records (as in metrics.jsonl); "train":
    the result's train_log (weights, cosines, losses at log steps).
    """
    _check_source(source)

    def fn(conn):
      self._row(conn, run_id)
      records: dict[int, dict] = {}
      for step, key, value in conn.execute(
          "SELECT step, key, value FROM series WHERE run_id = ? AND source = ?"
          " ORDER BY step, key", (run_id, source)):
        records.setdefault(step, {"step": step})[key] = value
      return list(records.values())

    return self._transaction(fn, write=False)

  def metric_history(self, experiment: str, key: str,
                     source: str = "eval") -> list[dict]:
    """One key over time for each run of an experiment (e.g. for figures).

    [{run_id, run_name, grid, seed, config_hash, status, steps, values}] for
    the same attempt per run that `results` picks; steps/values may be empty.
    """
    _check_source(source)

    def fn(conn):
      now = time.time()
      out = []
      for attempts in self._grouped(conn, experiment).values():
        row = self._resolve(attempts, now)[1]
        status = self._own_status(row, now)[0]
        points = conn.execute(
            "SELECT step, value FROM series WHERE run_id = ? AND source = ? "
            "AND key = ? ORDER BY step", (row["id"], source, key)).fetchall()
        out.append({"run_id": row["id"], "run_name": row["run_name"],
                    "grid": json.loads(row["grid"]), "seed": row["seed"],
                    "config_hash": row["config_hash"], "status": status,
                    "steps": [p[0] for p in points],
                    "values": [p[1] for p in points]})
      return out

    return self._transaction(fn, write=False)

  # -- export

  def table(self, experiment: str) -> tuple[list[str], list[dict]]:
    """(columns, rows): one flat row per run, as `export` writes csv/parquet.

    Columns: run_name, the grid axes (``grid/<axis>`` when an axis name
    clashes with a fixed column), seed, status, attempt, ids (config and
    data hash), provenance, times, then every final metric and scalar
    ``report/<key>``, sorted.
    """
    results = self.results(experiment)
    fixed = ["run_name", "seed", "status", "error", "config_hash",
             "data_hash", "run_id", "attempt", "git_commit", "git_dirty",
             "device_kind", "device_count", "started_at", "ended_at",
             "wall_time_s", "steps", "best_step"]
    axes: list[str] = []
    extra: set[str] = set()
    rows = []
    for r in results:
      git, dev = r.get("git") or {}, r.get("devices") or {}
      row = {"run_name": r["run_name"], "seed": r.get("seed"),
             "status": r["status"], "error": r.get("error"),
             "config_hash": r.get("config_hash"),
             "data_hash": (r.get("data") or {}).get("hash"),
             "run_id": r["run_id"],
             "attempt": r["attempt"], "git_commit": git.get("commit"),
             "git_dirty": git.get("dirty"), "device_kind": dev.get("kind"),
             "device_count": dev.get("count"),
             "started_at": _iso(r["started_at"]),
             "ended_at": _iso(r["ended_at"]),
             "wall_time_s": r.get("wall_time_s"), "steps": r.get("steps"),
             "best_step": r.get("best_step")}
      for axis, value in (r.get("grid") or {}).items():
        if axis == "seed":
          continue
        col = f"grid/{axis}" if axis in fixed else axis
        if col not in axes:
          axes.append(col)
        row[col] = _dumps(value) if isinstance(value, (list, dict)) else value
      for k, v in (r.get("metrics") or {}).items():
        row[k] = _number(v)[1]
        extra.add(k)
      for k, v in (r.get("report") or {}).items():
        if v is None or isinstance(v, (bool, int, float, str)):
          row[f"report/{k}"] = _number(v)[1] if not isinstance(v, str) else v
          extra.add(f"report/{k}")
      rows.append(row)
    columns = ["run_name", *axes, *fixed[1:], *sorted(extra)]
    return columns, rows

  def export(self, experiment: str, fmt: str,
             out_path: str | os.PathLike) -> pathlib.Path:
    """Writes an experiment's runs to `out_path` and returns the path.

    csv and parquet: the flat table of `table` (one row per run, NaN as an
    empty cell / null); jsonl: one full result dict per line. The file is
    written to a temporary name first, so a failed export leaves no half file.
    """
    if fmt not in EXPORT_FORMATS:
      raise ValueError(f"unknown export format {fmt!r}; use one of "
                       f"{', '.join(EXPORT_FORMATS)}")
    out_path = pathlib.Path(out_path)
    if fmt == "parquet":
      try:
        import pyarrow
        import pyarrow.parquet
      except ImportError as e:
        raise ImportError("exporting to parquet needs pyarrow: "
                          "pip install pyarrow (or use --format csv)") from e
    if fmt == "jsonl":
      payload = self.results(experiment)
      if not payload:
        raise ValueError(self._nothing(experiment))
    else:
      columns, rows = self.table(experiment)
      if not rows:
        raise ValueError(self._nothing(experiment))
    if out_path.is_dir():
      raise IsADirectoryError(
          f"export output {out_path} is a directory; give a file path, e.g. "
          f"--out {out_path / f'{experiment}.{fmt}'}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mode = run_files.file_mode(out_path)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.")
    os.fchmod(fd, mode)  # mkstemp's 0600 -> what the umask gives
    os.close(fd)
    try:
      if fmt == "jsonl":
        with open(tmp, "w") as f:
          for r in payload:
            f.write(_dumps(r) + "\n")
      elif fmt == "csv":
        with open(tmp, "w", newline="") as f:
          w = csv.DictWriter(f, fieldnames=columns, restval="")
          w.writeheader()
          for row in rows:
            w.writerow({k: "" if v is None else v for k, v in row.items()})
      else:
        data = {c: _parquet_column([row.get(c) for row in rows])
                for c in columns}
        pyarrow.parquet.write_table(pyarrow.table(data), tmp)
      os.replace(tmp, out_path)
    except BaseException:
      pathlib.Path(tmp).unlink(missing_ok=True)
      raise
    return out_path

  def _nothing(self, experiment: str) -> str:
    known = [r[0] for r in self.conn.execute(
        "SELECT DISTINCT experiment FROM runs ORDER BY experiment")]
    return (f"results store {self.path} has no runs of {experiment!r}; run "
            f"`mtrec run {experiment}` first" +
            (f" (stored: {', '.join(known)})" if known else ""))


def _parquet_column(values: list) -> list:
  """A column of one type: mixed ones (e.g. 0.1 and 'auto') become text."""
  kinds = {type(v) for v in values if v is not None}
  if kinds <= {int, float} or len(kinds) <= 1:
    return values
  return [None if v is None else str(v) for v in values]
