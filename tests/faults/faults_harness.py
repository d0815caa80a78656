"""Shared pieces of the fault-injection suite (issue 16, "must show"): a
tiny `mtrec run` of quickstart, the fork server that starts it, and how to
read what it left (run folder, result.json, store)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENT = "quickstart"
RUN = "model=shared_bottom,seed=0"
NUM_STEPS, EVAL_EVERY = 40, 10  # checkpoints at steps 10, 20, 30 and 40
# A run of a few seconds: 16 steps an epoch, so the 40 steps cross two
# epoch boundaries (the batch stream must resume mid-epoch too).
ARGS = ("run", EXPERIMENT, "--only", "model=shared_bottom", "--seed", "0",
        "--set", f"train.num_steps={NUM_STEPS}",
        "--set", f"train.eval_every={EVAL_EVERY}",
        "--set", "data.n_train=512", "--set", "data.n_val=128",
        "--set", "data.n_test=128", "--set", "train.batch_size=32",
        "--set", "model.bottom_hidden=8,", "--set", "model.tower_hidden=4,",
        "--no-progress")
# Fields that may differ between two runs of one config: timings, where the
# parameters went, and the checkout's commit (others commit meanwhile).
UNEQUAL = {"wall_time_s", "compile_time_s", "params_dir", "git"}


def env(tmp: pathlib.Path) -> dict:
  """One environment for the server and all runs, so their numbers are
  comparable (XLA at -O0 compiles in half the time, as in
  tests/train/test_resume.py)."""
  e = dict(os.environ, JAX_PLATFORMS="cpu", MTREC_DISTRIBUTED="0",
           XLA_FLAGS="--xla_backend_optimization_level=0",
           TF_CPP_MIN_LOG_LEVEL="3",
           # Each run compiles some 40 small programs (most of them the
           # eager ops of model init); the later runs read them from here.
           JAX_COMPILATION_CACHE_DIR=str(tmp / "jax-cache"),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  for key in ("MTREC_FAULT", "MTREC_STORE", "SLURM_ARRAY_TASK_ID"):
    e.pop(key, None)  # (an array task's id would shard the grid)
  e["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), e.get("PYTHONPATH")) if p)
  return e


class Server:
  """The client side of forkserver.py."""

  def __init__(self, tmp: pathlib.Path):
    self.tmp = tmp = pathlib.Path(tmp).resolve()
    self.proc = subprocess.Popen(
        [sys.executable, str(pathlib.Path(__file__).with_name(
            "forkserver.py"))], cwd=tmp, env=env(tmp), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert self._reply() == {"ready": True}

  def _reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the fork server exited ({self.proc.wait()})")
    return json.loads(line)

  def _ask(self, **req) -> dict:
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    return self._reply()

  def start(self, name: str, *extra: str, args=ARGS, fault: str = "") -> int:
    """Starts `mtrec run` (`args` + `extra`) with its workdir and store
    under tmp/NAME; `fault`: $MTREC_FAULT for this process only."""
    folder = self.tmp / name
    folder.mkdir(exist_ok=True)
    argv = [*args[1:], "--workdir", str(folder / "runs"),
            "--store", str(folder / "m.db"), *extra]
    return self._ask(op="run", argv=[args[0], *argv], cwd=str(self.tmp),
                     env={"MTREC_FAULT": fault} if fault else {},
                     log=str(folder / "log.txt"))["pid"]

  def wait(self, pid: int, timeout: float = 180) -> int:
    got = self._ask(op="wait", pid=pid, timeout=timeout)
    assert not got["timed_out"], f"run {pid} still running after {timeout}s"
    return got["code"]

  def run(self, name: str, *extra: str, fault: str = "", **kw) -> int:
    return self.wait(self.start(name, *extra, fault=fault, **kw))

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait(timeout=30)


def log(tmp: pathlib.Path, name: str) -> str:
  return (tmp / name / "log.txt").read_text()


def run_dirs(tmp: pathlib.Path, name: str) -> list[pathlib.Path]:
  """The run folders <RUN>@<config hash> under tmp/NAME."""
  return sorted((tmp / name / "runs" / EXPERIMENT).glob(f"{RUN}@*"))


def run_dir(tmp: pathlib.Path, name: str) -> pathlib.Path:
  (one,) = run_dirs(tmp, name)
  return one


def result(folder: pathlib.Path) -> dict:
  return json.loads((folder / "result.json").read_text())


def comparable(res: dict) -> dict:
  return {k: v for k, v in res.items() if k not in UNEQUAL}
