"""`mtrec store backup OUT` and `mtrec store verify`: a live store as one file;
`mtrec store import FILE...`: exported runs back into a store.

A store in WAL mode keeps its latest committed transactions in
``mtrec.db-wal`` until a checkpoint copies them into ``mtrec.db``; after a
killed run, copying ``mtrec.db`` alone gives a store without them (even an
empty one).  `backup` uses SQLite's online backup API, which reads one
consistent snapshot (main file and log together) while other processes go on
writing, into a temporary file next to OUT; the copy is switched out of WAL
mode (so it is whole in its one file), checked (``PRAGMA integrity_check``)
and only then renamed to OUT.  `verify` checks a store in place: integrity,
foreign keys, schema version, and a count of runs by status and of series
rows, without writing to it.

A PostgreSQL store (``--store postgresql://...``) is backed up to the same
kind of file: an SQLite store holding all its rows, read from one
REPEATABLE READ snapshot (`postgres.to_sqlite`), so the copy opens with
``--store OUT`` anywhere; `verify` of one makes such a copy in a temporary
folder and checks it.
"""
from __future__ import annotations

import os
import pathlib
import sqlite3
import sys
import tempfile
from typing import Any

from mtrec_jax.results import postgres
from mtrec_jax.results import records
from mtrec_jax.results import run_files
from mtrec_jax.results import store as store_lib


class VerifyError(ValueError):
  """A store failed its checks (the message says which)."""


def _open_existing(path: pathlib.Path, *, readonly: bool) -> sqlite3.Connection:
  store_lib.check_store_path(path)
  # Refuses a missing or a 0-byte file, naming the fix.
  store_lib._check_not_empty(path, create=False)  # noqa: SLF001
  if readonly:
    # mode=ro: a verify never writes (no migration, no checkpoint).
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           isolation_level=None, timeout=30.0)
  else:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
  return conn


def summary(conn: sqlite3.Connection) -> dict[str, Any]:
  """Integrity and counts of an open store (see `verify`)."""
  integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
  foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
  tables = {r[0] for r in conn.execute(
      "SELECT name FROM sqlite_master WHERE type = 'table'")}
  out: dict[str, Any] = {
      "integrity": "ok" if integrity == ["ok"] else "; ".join(integrity[:10]),
      "foreign_key_errors": len(foreign),
      "schema_version": conn.execute("PRAGMA user_version").fetchone()[0],
      "tables": sorted(tables)}
  if "runs" in tables:
    out["runs_by_status"] = dict(conn.execute(
        "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status"))
    out["attempts"] = sum(out["runs_by_status"].values())
    out["experiments"] = conn.execute(
        "SELECT count(DISTINCT experiment) FROM runs").fetchone()[0]
    out["runs"] = conn.execute(
        "SELECT count(*) FROM (SELECT DISTINCT experiment, config_hash, seed "
        "FROM runs)").fetchone()[0]
  for table in ("series", "final_metrics"):
    if table in tables:
      out[f"{table}_rows"] = conn.execute(
          f"SELECT count(*) FROM {table}").fetchone()[0]
  return out


def _problems(s: dict[str, Any]) -> list[str]:
  out = []
  if s["integrity"] != "ok":
    out.append(f"integrity_check: {s['integrity']}")
  if s["foreign_key_errors"]:
    out.append(f"{s['foreign_key_errors']} rows break a foreign key")
  if "runs" not in s["tables"]:
    out.append("no 'runs' table: not a results store")
  if s["schema_version"] > store_lib.SCHEMA_VERSION:
    out.append(f"schema version {s['schema_version']} is newer than this "
               f"mtrec-jax ({store_lib.SCHEMA_VERSION}); upgrade mtrec-jax")
  return out


def verify(path: str | os.PathLike) -> dict[str, Any]:
  """Checks the store at `path` without writing to it; returns `summary`,
  or raises VerifyError naming each problem."""
  if isinstance(store_lib.check_store_path(path), str):  # PostgreSQL
    with tempfile.TemporaryDirectory(prefix="mtrec-verify-") as tmp:
      return backup(path, pathlib.Path(tmp, "copy.db"))
  path = pathlib.Path(path)
  conn = _open_existing(path, readonly=True)
  try:
    s = summary(conn)
  except sqlite3.DatabaseError as e:
    raise VerifyError(f"results store {path}: {e}; restore it from a "
                      f"backup (`mtrec store backup` makes one)") from e
  finally:
    conn.close()
  problems = _problems(s)
  if problems:
    raise VerifyError(f"results store {path} failed its checks: "
                      f"{'; '.join(problems)}")
  return s


def backup(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
  """Copies the (possibly live) store at `path` to the single file `out`
  and returns the copy's `summary`; `out` is replaced only by a copy that
  passed its checks."""
  url = store_lib.check_store_path(path)
  url = url if isinstance(url, str) else None  # a PostgreSQL store
  path, out = (url or pathlib.Path(path)), pathlib.Path(out)
  if out.is_dir():
    raise IsADirectoryError(f"backup output {out} is a directory; give a "
                            f"file path, e.g. {out / 'mtrec.db'}")
  if not url and out.exists() and out.resolve() == path.resolve():
    raise ValueError(f"backup output {out} is the store itself; give "
                     f"another file path")
  source = None if url else _open_existing(path, readonly=False)
  out.parent.mkdir(parents=True, exist_ok=True)
  mode = run_files.file_mode(out)
  fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
  os.fchmod(fd, mode)
  os.close(fd)
  try:
    if url:  # an empty SQLite store of this schema, then every row
      os.unlink(tmp)
      store_lib.Store(tmp).close()
      os.chmod(tmp, mode)
    dest = sqlite3.connect(tmp, isolation_level=None)
    try:
      if url:
        postgres.to_sqlite(url, dest)
      else:
        source.backup(dest)  # one consistent snapshot, main file + WAL
      # The copy inherits WAL mode from the header; DELETE mode makes it
      # self-contained (no -wal/-shm beside it).
      dest.execute("PRAGMA journal_mode = DELETE")
      s = summary(dest)
    finally:
      dest.close()
    problems = _problems(s)
    if problems:
      raise VerifyError(f"the copy of {path} failed its checks, so {out} "
                        f"was not written: {'; '.join(problems)}")
    os.replace(tmp, out)
  except BaseException:
    for leftover in (tmp, f"{tmp}-journal", f"{tmp}-wal", f"{tmp}-shm"):
      pathlib.Path(leftover).unlink(missing_ok=True)
    raise
  finally:
    if source is not None:
      source.close()
  return s


def format_summary(s: dict[str, Any]) -> str:
  statuses = ", ".join(f"{n} {k}" for k, n in
                       s.get("runs_by_status", {}).items()) or "none"
  return (f"integrity {s['integrity']}; schema version {s['schema_version']}; "
          f"{s.get('experiments', 0)} experiments, {s.get('runs', 0)} runs "
          f"({s.get('attempts', 0)} attempts: {statuses}); "
          f"{s.get('series_rows', 0)} series rows, "
          f"{s.get('final_metrics_rows', 0)} final metrics")


def cmd_store(args) -> int:
  """`mtrec store backup OUT` / `verify` (see the module doc) / `import
  FILE...` (`records.import_records`)."""
  files = args.files
  if args.action == "import":
    if not files:
      raise ValueError("mtrec store import needs the export files: mtrec "
                       "store import FILE.jsonl... [--store PATH]")
    with store_lib.Store(args.store) as store:
      for f in files:
        n = records.import_records(store, f)
        print(f"{f} -> {args.store}: {n['imported']} runs imported, "
              f"{n['already']} already there, {n['unfinished']} not "
              f"finished (left to run)" +
              (f"; {n['rekeyed']} re-keyed (exported before config keys "
               f"were added)" if n["rekeyed"] else ""))
    return 0
  if args.action == "backup":
    if len(files) != 1:
      raise ValueError("mtrec store backup needs one output file: "
                       "mtrec store backup OUT [--store PATH]")
    s = backup(args.store, files[0])
    print(f"wrote {files[0]} from {args.store}: {format_summary(s)}")
    return 0
  if files:
    raise ValueError(f"mtrec store verify takes no file (got "
                     f"{' '.join(files)}); it checks --store PATH in place")
  try:
    s = verify(args.store)
  except VerifyError as e:
    print(f"mtrec: error: {e}", file=sys.stderr)
    return 1
  print(f"{args.store}: {format_summary(s)}")
  return 0


def add_parser(command) -> None:
  """Adds `mtrec store` through cli.py's `command` helper."""
  sp = command("store", cmd_store, "back up a live results store to one "
               "self-contained file, verify one, or import exported runs",
               store=True)
  sp.add_argument("action", choices=("backup", "verify", "import"),
                  help="backup: copy --store to OUT (safe while runs write "
                       "to it); verify: integrity check and counts; import: "
                       "store the finished runs of exported jsonl files (a "
                       "sweep then skips them)")
  sp.add_argument("files", nargs="*", metavar="FILE",
                  help="backup: the output file; import: the jsonl exports")
