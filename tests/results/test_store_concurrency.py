"""The store under fire (issue 16): 8 processes share 300 runs while random
processes are SIGKILLed and replaced; at the end no run is lost, none is
done twice, and every run a killed process held was taken over.

The runs are instant (claim, heartbeat, an eval record, finish: the store's
whole protocol, no training), so the test is about the store alone.  Each
process poses as its own host (a hostname of its own), so its pid cannot be
checked and a killed one's claims are taken over only when their heartbeat
lapses (a 1 s window, `MTREC_STALE_AFTER_S`): the case of array jobs on
many machines, which is what the PostgreSQL backend is for.
"""
from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from store_backends import store_target  # noqa: F401  (a fixture)

from mtrec_jax.results.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
PROCESSES, RUNS, KILLS, STALE_S = 8, 300, 24, 1.0
EXPECTED = [(f"run{i}", f"h{i:03d}", i % 5) for i in range(RUNS)]

# One process: until every run is done, claims the runs not done yet (half
# of the processes in one order, so they contend for the same run at once,
# half each in an order of its own) and runs each (claim, heartbeat, eval,
# finish).  A run
# taken over under it (its heartbeat looked stale) is left to the new owner.
WORKER = r"""
import pathlib, random, socket, sys, time
name, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
up = pathlib.Path(sys.argv[5])  # written at the first claim: a fair victim
socket.gethostname = lambda: name  # a host of its own: only heartbeats count
from mtrec_jax.results.store import Store
runs = [(f"run{i}", f"h{i:03d}", i % 5) for i in range(int(sys.argv[4]))]
rng = random.Random(seed)
with Store(target) as s:
  while True:
    todo = [(r.run_name, r.config_hash, r.seed) for r in s.status("exp", runs)
            if r.status != "done"]
    if not todo:
      break
    if seed % 2:  # odd: an order of its own; even: the list's, colliding
      rng.shuffle(todo)
    ran = 0
    for run_name, h, seed_ in todo:
      rid = s.claim("exp", run_name, {"i": run_name}, {"i": run_name}, h,
                    seed_)
      if rid is None:
        continue
      ran += 1
      up.touch()
      try:
        s.heartbeat(rid)
        time.sleep(rng.random() * 0.004)
        s.log_eval(rid, {"step": 1, "val/t/auc": 0.5})
        s.finish(rid, {"status": "done", "config_hash": h, "seed": seed_,
                       "metrics": {"test/t/auc": 0.5}})
      except ValueError as e:
        if "taken over" not in str(e):
          raise
    if not ran:
      time.sleep(0.1)  # the rest is held by others (or by the dead)
"""


def _start(target, name: str, seed: int, up) -> subprocess.Popen:
  env = dict(os.environ, MTREC_STALE_AFTER_S=str(STALE_S),
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen([sys.executable, "-c", WORKER, name, str(target),
                           str(seed), str(RUNS), str(up)], env=env,
                          stderr=subprocess.PIPE, text=True)


def test_random_kills_lose_and_duplicate_no_run(store_target, tmp_path):
  rng = random.Random(16)
  Store(store_target).close()  # the schema, before the crowd
  start = time.monotonic()
  up = {f"node{i}": tmp_path / f"node{i}.up" for i in range(PROCESSES)}
  procs = {name: _start(store_target, name, i, up[name])
           for i, name in enumerate(up)}
  killed: list[str] = []
  try:
    for k in range(KILLS):
      time.sleep(rng.uniform(0.02, 0.3))
      while True:  # a process that is at work (it claimed a run)
        live = sorted(n for n, p in procs.items()
                      if p.poll() is None and up[n].exists())
        if live or all(p.poll() is not None for p in procs.values()):
          break
        time.sleep(0.02)
      if not live:
        break
      victim = rng.choice(live)
      procs[victim].send_signal(signal.SIGKILL)
      procs[victim].wait()
      killed.append(victim)
      name = f"node{PROCESSES + k}"  # its replacement, a new host
      up[name] = tmp_path / f"{name}.up"
      procs[name] = _start(store_target, name, PROCESSES + k, up[name])
    for name, p in procs.items():
      if name not in killed:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{name}: {err}"
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  elapsed = time.monotonic() - start

  with Store(store_target) as s:
    attempts = s.results("exp", latest_only=False)
    status = s.status("exp", EXPECTED)
    hosts = dict(s.conn.execute("SELECT id, hostname FROM runs").fetchall())
  by_run = collections.defaultdict(list)
  for a in attempts:
    by_run[a["config_hash"], a["seed"]].append(a)
  # None lost, none duplicated: each run done exactly once.
  assert [r.status for r in status] == ["done"] * RUNS
  assert len(by_run) == RUNS
  for key, runs in by_run.items():
    assert [a["status"] for a in runs].count("done") == 1, (key, runs)
    assert [a["attempt"] for a in runs] == list(range(1, len(runs) + 1))
    # Every other attempt was taken over by a later attempt of the run.
    for a in runs:
      if a["status"] == "done":
        continue
      assert a["status"] == "failed", (key, a)
      taker = int(re.search(r"taken over by attempt (\d+)",
                            a["error"]).group(1))
      assert taker > a["attempt"] and taker <= len(runs), (key, a)
  # Every run a killed process held (claimed, never finished) was taken
  # over once its heartbeat lapsed.
  abandoned = [a for a in attempts if hosts[a["run_id"]] in killed
               and a["status"] != "done"]
  assert abandoned, "no kill hit a process inside a run: nothing was shown"
  for a in abandoned:
    assert a["error"].startswith("abandoned: stale: no heartbeat"), a
  backend = "postgresql" if isinstance(store_target, str) else "sqlite"
  print(f"\n{backend}: {PROCESSES} processes, "
        f"{RUNS} runs, {len(killed)} kills, {len(abandoned)} runs taken over "
        f"from killed processes, {len(attempts)} attempts in "
        f"{elapsed:.1f}s")
