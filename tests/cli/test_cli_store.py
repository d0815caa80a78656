"""`mtrec run/status/export` with the results store: skips, shards, crashes.

The grid is quickstart's two models times seeds 0-1 at a few dozen steps; one
module-level fixture trains it once, as four concurrent shard processes, and
the other tests read that store (training is what costs time here).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from store_backends import store_target  # noqa: F401  (a fixture)

from mtrec_jax import cli
from mtrec_jax import sweep
from mtrec_jax.results.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
SETS = ["--set", "train.num_steps=30", "--set", "train.eval_every=10",
        "--set", "data.n_train=512", "--set", "data.n_val=128",
        "--set", "data.n_test=128", "--set", "train.batch_size=64"]
GRID = ["quickstart", "--seeds", "0-1", *SETS]  # 2 models x 2 seeds
RUNS = ["model=shared_bottom,seed=0", "model=shared_bottom,seed=1",
        "model=mmoe,seed=0", "model=mmoe,seed=1"]  # the expanded order


def _env():
  """The subprocesses' environment. XLA's backend optimisation level 0 about
  halves the compile time that dominates these tiny runs; every process that
  trains here uses it, so their numbers stay comparable."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  return env


def _popen(tmp, name, *argv):
  """`python -m mtrec_jax.cli ARGV` with its output in tmp/NAME.log."""
  log = open(tmp / f"{name}.log", "w")
  return subprocess.Popen([sys.executable, "-m", "mtrec_jax.cli", *argv],
                          cwd=tmp, env=_env(), stdout=log,
                          stderr=subprocess.STDOUT)


def _main(*argv) -> tuple[int, str]:
  """cli.main in this process: (exit code, stdout + stderr)."""
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    code = cli.main(list(map(str, argv)))
  return code, buf.getvalue()


def _attempts(path) -> list[tuple]:
  with Store(path) as s:  # either backend
    return [tuple(r) for r in s.conn.execute(
        "SELECT run_name, attempt, status, pid FROM runs ORDER BY run_name, "
        "attempt")]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """The grid run as shards 0/4..3/4, started together on one new store."""
  tmp = tmp_path_factory.mktemp("sharded")
  store = tmp / "not" / "yet" / "mtrec.db"  # its folder does not exist
  work = tmp / "runs"
  before = _main("status", *GRID, "--store", store)
  procs = [_popen(tmp, f"shard{i}", "run", *GRID, "--workdir", work,
                  "--store", store, "--shard", f"{i}/4", "--no-progress")
           for i in range(4)]
  codes = [p.wait(timeout=300) for p in procs]
  logs = [(tmp / f"shard{i}.log").read_text() for i in range(4)]
  assert codes == [0] * 4, "\n".join(logs)
  return {"tmp": tmp, "store": store, "work": work, "before": before,
          "pids": [p.pid for p in procs], "logs": logs}


def test_shards_store_every_run_exactly_once(sharded):
  rows = _attempts(sharded["store"])
  assert sorted(r[0] for r in rows) == sorted(RUNS)
  assert {r[1:3] for r in rows} == {(1, "done")}
  # Run j of the expanded grid went to shard j mod 4.
  by_pid = {r[0]: r[3] for r in rows}
  for j, run in enumerate(RUNS):
    assert by_pid[run] == sharded["pids"][j % 4]
    assert f"[1/1] quickstart {run}" in sharded["logs"][j % 4]
  # Each shard's table shows the whole grid from the store; the last shard
  # to finish sees all four runs done.
  assert any("4 done (of 4 runs)" in log for log in sharded["logs"])
  for log in sharded["logs"]:
    assert "task1 mse" in log and "shared_bottom" in log and "mmoe" in log


def test_status_missing_before_and_done_after(sharded):
  code, out = sharded["before"]
  assert code == 0
  assert "no results store" in out
  assert sum(l.endswith("  missing") for l in out.splitlines()) == 4
  assert out.splitlines()[-1] == "quickstart: 4 runs: 4 missing"
  code, out = _main("status", *GRID, "--store", sharded["store"])
  assert code == 0
  lines = out.splitlines()
  for run in RUNS:
    line = next(l for l in lines if l.startswith(run + " "))
    assert line.split()[1:4] == ["seed", run[-1], "done"]
  assert lines[-1] == "quickstart: 4 runs: 4 done"
  # Another config (other --set values) is another run: missing.
  code, out = _main("status", *GRID, "--set", "train.num_steps=31",
                    "--store", sharded["store"])
  assert code == 0 and out.splitlines()[-1] == "quickstart: 4 runs: 4 missing"


def test_export_csv_and_jsonl(sharded, monkeypatch):
  store = sharded["store"]
  out = sharded["tmp"] / "exp.csv"
  code, msg = _main("export", "quickstart", "--format", "csv", "--out", out,
                    "--store", store)
  assert code == 0 and "wrote 4 runs" in msg
  rows = list(csv.DictReader(out.open()))
  assert sorted(r["run_name"] for r in rows) == sorted(RUNS)
  for r in rows:
    assert r["status"] == "done" and r["steps"] == "30"
    assert r["model"] in ("shared_bottom", "mmoe") and r["seed"] in "01"
    assert float(r["test/task1/mse"]) > 0
  # jsonl: one full result per line, default path results/NAME.jsonl.
  monkeypatch.chdir(sharded["tmp"])
  code, _ = _main("export", "quickstart", "--format", "jsonl", "--store",
                  store)
  assert code == 0
  lines = (sharded["tmp"] / "results" / "quickstart.jsonl").read_text()
  results = [json.loads(l) for l in lines.splitlines()]
  assert sorted(r["run_name"] for r in results) == sorted(RUNS)
  for r in results:
    folder = sharded["work"] / "quickstart" / (
        f"{r['run_name']}@{r['config_hash']}")  # one folder per config
    on_disk = json.loads((folder / "result.json").read_text())
    assert r["metrics"] == on_disk["metrics"]
    assert r["config_hash"] == on_disk["config_hash"]
  code, msg = _main("export", "quickstart", "--format", "csv",
                    "--store", sharded["tmp"] / "nope.db")
  assert code == 2 and "no results store" in msg
  assert not (sharded["tmp"] / "nope.db").exists()


def test_rerun_skips_done_runs_and_force_reproduces(sharded):
  store, work = sharded["store"], sharded["work"]
  code, out = _main("run", *GRID, "--workdir", work, "--store", store,
                    "--no-progress")
  assert code == 0
  assert out.count("skipped: already done in the store") == 4
  assert "4 done (of 4 runs); 4 skipped" in out
  assert "task1 mse" in out  # the table, from the store
  assert [r[1:3] for r in _attempts(store)] == [(1, "done")] * 4
  # --force trains again, in a new process, as attempt 2: same numbers.
  tmp = sharded["tmp"]
  proc = _popen(tmp, "force", "run", *GRID, "--only", "model=mmoe", "--seed",
                "0", "--workdir", work, "--store", store, "--force",
                "--no-progress")
  code = proc.wait(timeout=300)
  log = (tmp / "force.log").read_text()
  assert code == 0 and "skipped" not in log, log
  with Store(store) as s:
    attempts = [r for r in s.results("quickstart", latest_only=False)
                if r["run_name"] == "model=mmoe,seed=0"]
    assert [(r["attempt"], r["superseded"]) for r in attempts] == [
        (1, True), (2, False)]
    assert attempts[0]["metrics"] == attempts[1]["metrics"]
    evals = [s.eval_history(r["run_id"]) for r in attempts]
  assert [e["step"] for e in evals[1]] == [10, 20, 30]
  assert evals[0] == evals[1]


def test_killed_run_shows_as_failed(tmp_path):
  store = tmp_path / "m.db"
  args = ["quickstart", "--only", "model=mmoe", "--seed", "0", *SETS,
          "--set", "train.num_steps=1000000"]
  proc = _popen(tmp_path, "killed", "run", *args, "--workdir",
                tmp_path / "runs", "--store", store, "--no-progress")
  try:
    deadline = time.monotonic() + 120
    status = None
    while status != "running":
      assert proc.poll() is None, (tmp_path / "killed.log").read_text()
      assert time.monotonic() < deadline, "the run never showed as running"
      time.sleep(0.2)
      if store.exists():
        with Store(store) as s:
          status = next(iter(s.status("quickstart")), None)
          status = status and status.status
    code, out = _main("status", *args, "--store", store)
    assert code == 0 and "  running  " in out
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()
  code, out = _main("status", *args, "--store", store)
  assert code == 0
  assert "  failed  " in out and "process gone" in out
  assert out.splitlines()[-1] == "quickstart: 1 runs: 1 failed"


def test_failed_run_is_stored_and_retried(tmp_path, monkeypatch,
                                          store_target):
  """Without training: a stand-in for train_and_evaluate fails (writing its
  failed result.json, as the real one does), then succeeds on the retry;
  on both store backends (the heartbeat thread, status and the retry)."""
  from mtrec_jax import config as config_lib
  from mtrec_jax.results import run_files
  from mtrec_jax.train import loop
  store, work = store_target, tmp_path / "runs"
  monkeypatch.setattr(sweep, "HEARTBEAT_EVERY_S", 0.02)
  beats = []

  def fake(config, workdir, *, experiment, grid, **kw):
    del kw
    res = {"experiment": experiment, "grid": grid, "seed": int(config.seed),
           "config_hash": config_lib.config_hash(config)}
    with Store(store) as s:  # the heartbeat thread keeps the run fresh
      beats.append(s.conn.execute("SELECT max(heartbeat_at) FROM runs")
                   .fetchone()[0])
      time.sleep(0.3)
      beats.append(s.conn.execute("SELECT max(heartbeat_at) FROM runs")
                   .fetchone()[0])
    run_files.append_jsonl(workdir / "metrics.jsonl",
                           {"step": 10, "val/task1/mse": 0.5})
    if fail:
      run_files.write_json(workdir / "result.json", {
          **res, "status": "failed", "error": "RuntimeError: boom"})
      raise RuntimeError("boom")
    return {**res, "status": "done", "metrics": {"test/task1/mse": 0.25}}

  monkeypatch.setattr(loop, "train_and_evaluate", fake)
  grid = ["quickstart", "--only", "model=mmoe", "--seed", "0", *SETS,
          "--store", store]
  args = ["run", *grid, "--workdir", work, "--no-progress"]
  fail = True
  code, out = _main(*args)
  assert code == 1 and "failed: RuntimeError: boom" in out
  assert beats[1] > beats[0]
  code, out = _main("status", *grid)
  assert "  failed    RuntimeError: boom" in out
  with Store(store) as s:
    (res,) = s.results("quickstart")
    assert res["status"] == "failed" and s.eval_history(res["run_id"]) == [
        {"step": 10, "val/task1/mse": 0.5}]
  fail = False  # a failed run is not final: the next `mtrec run` retries it
  code, out = _main(*args)
  assert code == 0 and "skipped" not in out
  assert [r[1:3] for r in _attempts(store)] == [(1, "failed"), (2, "done")]


@pytest.mark.parametrize("shard, message", [
    ("4/4", "0 <= I < N, so 0..3"),
    ("-1/4", "0 <= I < N"),
    ("0/0", "at least 1"),
    ("1", "write I/N"),
    ("a/b", "write I/N"),
])
def test_bad_shard_is_a_clear_error_and_writes_nothing(tmp_path, shard,
                                                       message):
  code, out = _main("run", *GRID, f"--shard={shard}", "--workdir",
                    tmp_path / "runs", "--store", tmp_path / "s" / "m.db")
  assert code == 2
  assert f"mtrec: error: --shard {shard!r}" in out and message in out
  assert list(tmp_path.iterdir()) == []
