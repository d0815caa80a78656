"""`mtrec run` as a multi-host job: two JAX processes (one CPU device each,
joined by `jax.distributed` over localhost, the way SLURM or a TPU pod
starts them) against one process with two devices.

Both see the same global batches (each process keeps its slice,
`parallel.process_slice`), so the stored metrics must be equal; process 0
alone claims, writes the run files and stores the result.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from mtrec_jax.results.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
ARGS = ["run", "quickstart", "--seed", "0", "--only", "model=mmoe",
        "--no-progress", "--set", "train.num_steps=30",
        "--set", "train.eval_every=10", "--set", "train.batch_size=64",
        "--set", "data.n_train=512", "--set", "data.n_val=128",
        "--set", "data.n_test=128"]
RUN = "runs/quickstart/model=mmoe,seed=0"


def _env(**extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "MTREC_DISTRIBUTED": "",
         "XLA_FLAGS": "--xla_backend_optimization_level=0", **extra}
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(cwd, name, env):
  log = open(cwd / f"{name}.log", "w")
  return subprocess.Popen([sys.executable, "-m", "mtrec_jax.cli", *ARGS,
                           "--store", str(cwd / "store.db")], cwd=cwd,
                          env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(procs, cwd, timeout=420):
  for name, p in procs:
    try:
      code = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      for _, q in procs:
        q.kill()
      raise
    assert code == 0, f"{name} exited {code}:\n" + (
        cwd / f"{name}.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  multi = tmp_path_factory.mktemp("two_processes")
  single = tmp_path_factory.mktemp("one_process")
  port = _free_port()
  procs = [(f"p{i}", _start(multi, f"p{i}", _env(
      JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i)))) for i in range(2)]
  _wait(procs, multi)
  one = _env(XLA_FLAGS="--xla_backend_optimization_level=0 "
             "--xla_force_host_platform_device_count=2")
  _wait([("single", _start(single, "single", one))], single)
  return multi, single


def test_two_processes_store_the_one_process_numbers(runs):
  multi, single = runs
  (a,), (b,) = ([json.loads((p / "result.json").read_text())
                 for p in root.glob(f"{RUN}@*")] for root in (multi, single))
  assert a["devices"]["process_count"] == 2 and a["devices"]["count"] == 2
  assert b["devices"]["process_count"] == 1 and b["devices"]["count"] == 2
  assert a["metrics"].keys() == b["metrics"].keys()
  for k, v in b["metrics"].items():
    assert a["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_process_zero_alone_claims_and_stores(runs):
  multi, _ = runs
  with Store(multi / "store.db") as store:
    rows = store.results("quickstart")
  assert [r["status"] for r in rows] == ["done"]
  (folder,) = multi.glob(f"{RUN}@*")  # <run name>@<config hash>
  assert rows[0]["metrics"] == json.loads(
      (folder / "result.json").read_text())["metrics"]
  # Process 1 reports nothing: process 0 speaks for the job.
  assert "results in runs/quickstart" in (multi / "p0.log").read_text()
  assert "results in" not in (multi / "p1.log").read_text()
