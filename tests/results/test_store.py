"""The results store: round trip, idempotence, concurrency, crashes; each
on both backends (`store_target`: an SQLite file, a PostgreSQL schema)."""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from store_backends import postgres_target, store_target  # noqa: F401

from mtrec_jax.results import postgres
from mtrec_jax.results import store as store_lib
from mtrec_jax.results.store import Store

PROV = {"git": {"commit": "abc123", "dirty": False},
        "packages": {"jax": "0.10.2"},
        "devices": {"platform": "cpu", "kind": "cpu", "count": 1,
                    "process_count": 1}}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _claim(s, name="lr=0.1,seed=0", h="h1", seed=0, **kw):
  grid = {"lr": 0.1, "seed": seed}
  return s.claim("exp", name, grid, {"lr": 0.1, "seed": seed}, h, seed, PROV,
                 **kw)


def _result(h="h1", seed=0, status="done", auc=0.75, **extra):
  return {"experiment": "exp", "grid": {"lr": 0.1, "seed": seed},
          "seed": seed, "config_hash": h, "status": status, **PROV,
          "steps": 30, "best_step": 20, "wall_time_s": 1.5,
          "metrics": {"test/income/auc": auc, "test/income/loss": math.nan,
                      "val/income/auc": math.inf},
          "train_log": [{"step": 10, "weight/income": 0.4, "cos/a/b": 0.1},
                        {"step": 20, "weight/income": 0.6, "cos/a/b": -0.2}],
          "report": {"gap": 0.5, "nested": {"x": 1}}, **extra}


def _count(path, sql, *args):
  """The first value `sql` returns, read outside the store's methods."""
  if isinstance(path, str):  # PostgreSQL: through a store's connection
    with Store(path) as s:
      return s.conn.execute(sql, args).fetchone()[0]
  with sqlite3.connect(path) as conn:
    return conn.execute(sql, args).fetchone()[0]


def _execute(target, sql, *args):
  """Runs `sql` on the store's database, outside the store's methods."""
  if isinstance(target, str):
    with Store(target) as s:
      s.conn.execute(sql, args)
    return
  with sqlite3.connect(target) as conn:
    conn.execute(sql, args)


def test_default_store_path(monkeypatch, tmp_path):
  monkeypatch.delenv("MTREC_STORE", raising=False)
  assert str(store_lib.default_store_path()) == os.path.join("results",
                                                             "mtrec.db")
  monkeypatch.setenv("MTREC_STORE", str(tmp_path / "x.db"))
  assert store_lib.default_store_path() == tmp_path / "x.db"
  url = "postgresql://me@db.example/mtrec"
  monkeypatch.setenv("MTREC_STORE", url)
  assert store_lib.default_store_path() == url  # a str: no "postgresql:/"
  for bad in ("mysql://h/db", str(pathlib.Path(url))):
    with pytest.raises(ValueError, match="URL.*postgresql://user@host/db"):
      store_lib.check_store_path(bad)


def test_schema_is_versioned_and_in_wal_mode(tmp_path):
  path = tmp_path / "deep" / "dir" / "m.db"
  with Store(path):
    pass
  assert _count(path, "PRAGMA user_version") == store_lib.SCHEMA_VERSION
  assert _count(path, "PRAGMA journal_mode") == "wal"
  with Store(path):  # reopening migrates nothing and keeps the data
    pass
  with sqlite3.connect(path) as conn:
    conn.execute("PRAGMA user_version = 99")
  with pytest.raises(ValueError, match="schema version 99.*upgrade mtrec-jax"):
    Store(path)


def test_postgres_schema_is_versioned(postgres_target):
  store_target = postgres_target
  with Store(store_target) as s:
    assert s.backend == "postgresql"
  assert _count(store_target, "SELECT version FROM mtrec_schema") == \
      store_lib.SCHEMA_VERSION
  with Store(store_target):  # reopening migrates nothing
    pass
  assert _count(store_target, "SELECT count(*) FROM mtrec_schema") == 1
  _execute(store_target, "UPDATE mtrec_schema SET version = 99")
  with pytest.raises(ValueError, match="schema version 99.*upgrade mtrec-jax"):
    Store(store_target)


def test_postgres_reader_of_an_empty_database_and_bad_server(
    postgres_target):
  store_target = postgres_target
  assert not store_lib.store_exists(store_target)
  with pytest.raises(FileNotFoundError, match="no mtrec tables.*mtrec run"):
    Store(store_target, create=False)
  Store(store_target).close()
  assert store_lib.store_exists(store_target)
  bad = store_target.replace("/mtrec_test?", "/no_such_db?", 1)
  if bad != store_target:
    with pytest.raises(sqlite3.OperationalError, match="cannot connect.*"
                       "no_such_db.*--store"):
      Store(bad)


def test_round_trip_and_exports(tmp_path, store_target):
  path = store_target
  with Store(path) as s:
    rid = _claim(s)
    assert isinstance(rid, int)
    s.log_eval(rid, {"step": 10, "val/income/auc": 0.6, "weight/income": 0.4,
                     "val/income/loss": math.nan})
    s.log_eval(rid, {"step": 20, "val/income/auc": 0.7, "weight/income": 0.6})
    s.log_eval(rid, {"step": 20, "val/income/auc": 0.71})  # repeat: replaces
    with pytest.raises(ValueError, match="no 'step'"):
      s.log_eval(rid, {"val/income/auc": 0.1})
    assert s.status("exp")[0].status == "running"
    assert s.results("exp")[0]["status"] == "running"
    s.finish(rid, _result())
    with pytest.raises(ValueError, match="already ended done"):
      s.finish(rid, _result())

    [res] = s.results("exp")
    assert res["status"] == "done" and res["run_id"] == rid
    assert res["attempt"] == 1 and res["run_name"] == "lr=0.1,seed=0"
    assert res["metrics"] == {"test/income/auc": 0.75,
                              "test/income/loss": None, "val/income/auc": None}
    assert res["config"] == {"lr": 0.1, "seed": 0}
    assert res["git"]["commit"] == "abc123"
    assert res["ended_at"] >= res["started_at"]

    assert s.eval_history(rid) == [
        {"step": 10, "val/income/auc": 0.6, "val/income/loss": None,
         "weight/income": 0.4},
        {"step": 20, "val/income/auc": 0.71, "weight/income": 0.6}]
    assert s.eval_history(rid, source="train") == [
        {"step": 10, "cos/a/b": 0.1, "weight/income": 0.4},
        {"step": 20, "cos/a/b": -0.2, "weight/income": 0.6}]
    [hist] = s.metric_history("exp", "weight/income", source="train")
    assert hist["steps"] == [10, 20] and hist["values"] == [0.4, 0.6]
    assert hist["grid"] == {"lr": 0.1, "seed": 0} and hist["status"] == "done"
    with pytest.raises(ValueError, match="unknown series source 'evals'"):
      s.eval_history(rid, source="evals")

    csv_path = s.export("exp", "csv", tmp_path / "out" / "exp.csv")
    jsonl_path = s.export("exp", "jsonl", tmp_path / "exp.jsonl")
  with open(csv_path, newline="") as f:
    [row] = list(csv.DictReader(f))
  assert row["lr"] == "0.1" and row["seed"] == "0" and row["status"] == "done"
  assert row["config_hash"] == "h1" and row["git_commit"] == "abc123"
  assert float(row["test/income/auc"]) == 0.75
  assert row["test/income/loss"] == "" and row["val/income/auc"] == ""
  assert row["report/gap"] == "0.5" and "report/nested" not in row
  [line] = jsonl_path.read_text().splitlines()
  back = json.loads(line)
  assert back["metrics"]["test/income/loss"] is None
  assert back["train_log"][1]["weight/income"] == 0.6
  assert back["report"]["nested"] == {"x": 1}
  # The long tables hold the same numbers, NaN/inf as NULL.
  assert _count(path, "SELECT count(*) FROM final_metrics WHERE value IS NULL"
                ) == 2
  assert _count(path, "SELECT git_dirty FROM runs") == 0


def test_export_parquet_and_errors(tmp_path, store_target, monkeypatch):
  with Store(store_target) as s:
    with pytest.raises(ValueError, match="no runs of 'exp'.*mtrec run exp"):
      s.export("exp", "csv", tmp_path / "e.csv")
    s.finish(_claim(s), _result())
    s.finish(_claim(s, "lr=auto,seed=1", "h2", 1), _result("h2", 1, auc=0.8))
    with pytest.raises(ValueError, match="unknown export format 'xls'"):
      s.export("exp", "xls", tmp_path / "e.xls")
    assert not (tmp_path / "e.csv").exists()
    pyarrow = pytest.importorskip("pyarrow.parquet")
    out = s.export("exp", "parquet", tmp_path / "e.parquet")
    table = pyarrow.read_table(out).to_pydict()
    assert table["test/income/auc"] == [0.75, 0.8]
    assert table["test/income/loss"] == [None, None]
    assert table["seed"] == [0, 1]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
      s.export("exp", "parquet", tmp_path / "f.parquet")


def test_done_runs_are_skipped_and_force_adds_an_attempt(tmp_path, store_target):
  with Store(store_target) as s:
    first = _claim(s)
    assert _claim(s) is None  # running, owner (this process) alive
    s.finish(first, _result(auc=0.7))
    assert _claim(s) is None  # done: skipped
    second = _claim(s, force=True)
    assert second is not None and second != first
    # While the forced re-run runs, "the" result is still the done one.
    assert s.status("exp")[0].status == "running"
    assert s.results("exp")[0]["run_id"] == first
    s.finish(second, _result(auc=0.9))
    [res] = s.results("exp")
    assert (res["run_id"], res["attempt"], res["metrics"]["test/income/auc"]
            ) == (second, 2, 0.9)
    every = s.results("exp", latest_only=False)
    assert [(r["attempt"], r["superseded"]) for r in every] == [(1, True),
                                                                (2, False)]
    # A forced re-run that fails keeps the done result in place.
    third = _claim(s, force=True)
    s.fail(third, "RuntimeError: out of memory")
    [st] = s.status("exp")
    assert (st.status, st.run_id, st.attempts) == ("done", second, 3)
    assert _claim(s) is None


def test_failed_runs_are_retried_and_diverged_ones_kept(tmp_path, store_target):
  with Store(store_target) as s:
    a = _claim(s, "a", "ha", 0)
    s.fail(a, "ValueError: bad batch")
    b = _claim(s, "b", "hb", 0)
    s.finish(b, _result("hb", 0, status="diverged",
                        error="non-finite loss at step 7"))
    statuses = s.status("exp", [("a", "ha", 0), ("b", "hb", 0),
                                ("c", "hc", 0)])
    assert [(r.run_name, r.status) for r in statuses] == [
        ("a", "failed"), ("b", "diverged"), ("c", "missing")]
    assert statuses[0].detail == "ValueError: bad batch"
    assert statuses[1].detail == "non-finite loss at step 7"
    assert _claim(s, "b", "hb", 0) is None
    retry = _claim(s, "a", "ha", 0)
    assert retry is not None and retry != a
    with pytest.raises(ValueError, match="does not match run"):
      s.finish(retry, _result("other", 0))
    with pytest.raises(ValueError, match="status 'weird'"):
      s.finish(retry, _result("ha", 0, status="weird"))
    with pytest.raises(ValueError, match="no run with id 999"):
      s.heartbeat(999)


def test_finish_is_all_or_nothing(store_target):
  path = store_target
  with Store(path) as s:
    rid = _claim(s)
    # The status update, the last of finish's writes, fails.
    if isinstance(path, str):
      s.conn.execute("CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN "
                     "RAISE EXCEPTION 'boom'; END $$ LANGUAGE plpgsql")
      s.conn.execute("CREATE TRIGGER boom BEFORE UPDATE OF status ON runs "
                     "FOR EACH ROW WHEN (NEW.status = 'done') EXECUTE "
                     "FUNCTION boom()")
    else:
      _execute(path, "CREATE TRIGGER boom BEFORE UPDATE OF status ON runs "
               "WHEN NEW.status = 'done' BEGIN SELECT RAISE(ABORT, 'boom'); "
               "END")
    with pytest.raises(sqlite3.DatabaseError, match="boom"):
      s.finish(rid, _result())
    assert s.status("exp")[0].status == "running"
    assert _count(path, "SELECT count(*) FROM final_metrics") == 0
    assert _count(path, "SELECT count(*) FROM series") == 0
    assert _count(path, "SELECT result IS NULL FROM runs") == 1


# A worker process: opens the store, waits for "go" on stdin, then claims
# and finishes the runs it is given; prints the ids it claimed.
WORKER = r"""
import json, sys, time
from mtrec_jax.results.store import Store
path, runs = sys.argv[1], json.loads(sys.argv[2])
with Store(path) as s:
  print("ready", flush=True)
  sys.stdin.readline()
  claimed = []
  for name, h, seed in runs:
    rid = s.claim("exp", name, {"x": name, "seed": seed}, {"x": name}, h, seed)
    if rid is None:
      continue
    claimed.append([h, seed, rid])
    s.log_eval(rid, {"step": 1, "val/t/auc": 0.5})
    time.sleep(0.02)
    s.finish(rid, {"status": "done", "config_hash": h, "seed": seed,
                   "metrics": {"test/t/auc": seed / 10}})
print(json.dumps(claimed), flush=True)
"""


def _workers(path, run_lists):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get(
      "PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path),
                             json.dumps(runs)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
           for runs in run_lists]
  for p in procs:  # every store opened (the first opens race on the schema)
    assert p.stdout.readline().strip() == "ready"
  for p in procs:
    p.stdin.write("go\n")
    p.stdin.flush()
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    outs.append(json.loads(out.strip().splitlines()[-1]))
  return outs


RUNS = [[f"x={i}", f"h{i}", i % 3] for i in range(12)]


@pytest.mark.parametrize("sharded", [False, True], ids=["shared", "shards"])
def test_concurrent_writers_lose_and_duplicate_nothing(store_target, sharded):
  path = store_target
  lists = [RUNS[i::4] for i in range(4)] if sharded else [RUNS] * 4
  outs = _workers(path, lists)
  claimed = [tuple(c) for out in outs for c in out]
  # Every run claimed exactly once, by one of the processes.
  assert sorted((h, s) for h, s, _ in claimed) == sorted(
      (h, s) for _, h, s in RUNS)
  if sharded:  # nobody competes: each process runs all of its shard
    for out, runs in zip(outs, lists):
      assert [(h, s) for h, s, _ in out] == [(h, s) for _, h, s in runs]
  assert _count(path, "SELECT count(*) FROM runs") == 12
  assert _count(path, "SELECT count(*) FROM runs WHERE status = 'done' AND "
                "attempt = 1 AND result IS NOT NULL") == 12
  assert _count(path, "SELECT count(*) FROM series") == 12
  assert _count(path, "SELECT count(*) FROM final_metrics") == 12
  with Store(path) as s:
    assert [r.status for r in s.status("exp", RUNS)] == ["done"] * 12
    assert {r["run_id"] for r in s.results("exp")} == {c[2] for c in claimed}


CRASHER = r"""
import sys, time
from mtrec_jax.results.store import Store
s = Store(sys.argv[1])
print(s.claim("exp", "lr=0.1,seed=0", {"lr": 0.1, "seed": 0}, {}, "h1", 0),
      flush=True)
time.sleep(60)
"""


def test_killed_process_leaves_a_failed_run_that_can_be_taken_over(
    store_target):
  path = store_target
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(path)],
                          stdout=subprocess.PIPE, text=True, env=env)
  try:
    old = int(proc.stdout.readline())
    with Store(path) as s:
      assert s.status("exp")[0].status == "running"
      assert _claim(s) is None  # its owner is alive on this host
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait(timeout=10)
      [st] = s.status("exp")
      assert (st.status, st.run_id) == ("failed", old)
      assert "process gone" in st.detail and str(proc.pid) in st.detail
      assert s.results("exp")[0]["status"] == "failed"
      new = _claim(s)
      assert new is not None and new != old
      [old_row] = [r for r in s.results("exp", latest_only=False)
                   if r["run_id"] == old]
      assert old_row["status"] == "failed"
      assert "taken over by attempt 2" in old_row["error"]
      s.finish(new, _result())
      assert s.status("exp")[0].status == "done"
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def test_other_hosts_are_judged_by_their_heartbeat(store_target):
  path = store_target
  with Store(path, stale_after_s=600) as s:
    rid = _claim(s)
    _execute(path, "UPDATE runs SET hostname = 'elsewhere', pid = 1")
    assert s.status("exp")[0].status == "running"
    assert _claim(s) is None
    _execute(path, "UPDATE runs SET heartbeat_at = ?", time.time() - 700)
    [st] = s.status("exp")
    assert st.status == "failed" and "no heartbeat" in st.detail
    s.heartbeat(rid)  # the owner speaks up again
    assert s.status("exp")[0].status == "running"
    _execute(path, "UPDATE runs SET heartbeat_at = 0")
    assert _claim(s) not in (None, rid)


class _Holder:
  """Another connection that holds the store's write lock: SQLite's BEGIN
  IMMEDIATE, or the PostgreSQL store's advisory lock (postgres.Dialect)."""

  def __init__(self, target):
    if isinstance(target, str):
      self.conn = postgres.Connection(target, 10_000)
    else:
      self.conn = sqlite3.connect(target, isolation_level=None,
                                  check_same_thread=False)

  def execute(self, sql):
    if sql == "BEGIN IMMEDIATE" and isinstance(self.conn,
                                               postgres.Connection):
      postgres.Dialect.begin(None, self.conn, write=True)
    else:
      self.conn.execute(sql)


def test_writes_retry_while_another_connection_holds_the_lock(store_target):
  path = store_target
  with Store(path) as s:
    rid = _claim(s)
  holder = _Holder(path)
  holder.execute("BEGIN IMMEDIATE")
  holder.execute("UPDATE runs SET heartbeat_at = heartbeat_at")
  timer = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
  # busy_timeout 0 (PostgreSQL: 1 ms): the database gives up at once, so
  # the store's own retries work.
  with Store(path, busy_timeout_ms=0) as s:
    timer.start()
    start = time.monotonic()
    s.log_eval(rid, {"step": 5, "val/t/auc": 0.9})
    assert time.monotonic() - start >= 0.2
    assert s.busy_retries > 0
    assert s.eval_history(rid) == [{"step": 5, "val/t/auc": 0.9}]
  timer.join()
  holder.execute("BEGIN IMMEDIATE")  # now held for good: a clear error
  try:
    with Store(path, busy_timeout_ms=0, lock_timeout_s=0.2) as s:
      with pytest.raises(store_lib.StoreLockedError, match="stayed locked"):
        s.heartbeat(rid)
  finally:
    holder.execute("ROLLBACK")
    holder.conn.close()
