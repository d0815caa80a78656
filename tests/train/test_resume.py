"""Kill and resume: `mtrec run` killed with SIGKILL mid-run, its newest
checkpoint then truncated, and `mtrec run --resume` ends with the result of
an uninterrupted run, bit for bit (CPU).

Three processes train the same run of quickstart: an uninterrupted reference
and the victim, side by side, then the victim's resumption. All three use the
same XLA flags, so their numbers are comparable (and compile in half the
time, as in tests/cli/test_cli_store.py).
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

from mtrec_jax.results.store import Store
from mtrec_jax.train import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = "model=shared_bottom,seed=0"
NUM_STEPS, EVAL_EVERY = 200, 20  # a checkpoint at each of the 10 evaluations
ARGS = ["quickstart", "--only", "model=shared_bottom", "--seed", "0",
        "--set", f"train.num_steps={NUM_STEPS}",
        "--set", f"train.eval_every={EVAL_EVERY}",
        "--set", "data.n_train=512", "--set", "data.n_val=128",
        "--set", "data.n_test=128", "--set", "train.batch_size=64",
        "--no-progress"]
# Fields that may differ between two runs of the same config: timings, and
# where the parameters went.
UNEQUAL = {"wall_time_s", "compile_time_s", "params_dir"}


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
  return env


def _start(tmp: pathlib.Path, name: str, *extra) -> subprocess.Popen:
  """`mtrec run` with its own run folder and store under tmp/NAME."""
  (tmp / name).mkdir(exist_ok=True)
  log = open(tmp / name / "log.txt", "a")
  return subprocess.Popen(
      [sys.executable, "-m", "mtrec_jax.cli", "run", *ARGS, "--workdir",
       tmp / name / "runs", "--store", tmp / name / "m.db", *extra],
      cwd=tmp, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _run_dir(tmp: pathlib.Path, name: str) -> pathlib.Path:
  """The run's folder, <RUN>@<config hash> (not there yet: a missing path)."""
  found = sorted((tmp / name / "runs" / "quickstart").glob(f"{RUN}@*"))
  return found[0] if found else tmp / name / "runs" / "quickstart" / RUN


def _log(tmp: pathlib.Path, name: str) -> str:
  return (tmp / name / "log.txt").read_text()


def _truncate(folder: pathlib.Path) -> int:
  """Cuts every file under `folder` to half its length (a torn write)."""
  n = 0
  for f in folder.rglob("*"):
    if f.is_file():
      os.truncate(f, f.stat().st_size // 2)
      n += 1
  return n


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
  rng = random.Random(6)  # where to kill: reproducible, not hand-picked
  kill_after = rng.randint(2, 6)  # checkpoints; 4+ of the 10 still to come
  delay = rng.uniform(0.0, 0.2)  # then somewhere within the next interval
  reference = _start(tmp_path, "reference")
  victim = _start(tmp_path, "victim")
  try:
    deadline = time.monotonic() + 240
    while max(checkpoints.saved_steps(_run_dir(tmp_path, "victim")),
              default=0) < kill_after * EVAL_EVERY:
      assert victim.poll() is None, _log(tmp_path, "victim")
      assert time.monotonic() < deadline, "the victim saved no checkpoints"
      time.sleep(0.005)
    time.sleep(delay)
    assert victim.poll() is None, (
        "the victim finished before it was killed; lower kill_after or raise "
        "NUM_STEPS\n" + _log(tmp_path, "victim"))
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert reference.wait(timeout=240) == 0, _log(tmp_path, "reference")
  finally:
    for p in (victim, reference):
      if p.poll() is None:
        p.kill()
        p.wait()
  victim_dir = _run_dir(tmp_path, "victim")
  assert not (victim_dir / "result.json").exists()
  steps = checkpoints.saved_steps(victim_dir)
  assert len(steps) >= 2, steps
  # The newest checkpoint is torn: resuming warns and takes the one before.
  assert _truncate(victim_dir / "checkpoints" / str(steps[-1]) / "state")
  resumed = _start(tmp_path, "victim", "--resume")
  assert resumed.wait(timeout=240) == 0, _log(tmp_path, "victim")
  out = _log(tmp_path, "victim")
  assert "skipped" not in out  # the killed attempt's store row is taken over
  assert f"checkpoints/{steps[-1]} is damaged" in " ".join(out.split())
  assert f"resuming from the checkpoint of step {steps[-2]}" in out

  ref_dir = _run_dir(tmp_path, "reference")
  want = json.loads((ref_dir / "result.json").read_text())
  got = json.loads((victim_dir / "result.json").read_text())
  assert want["status"] == "done" and want["steps"] == NUM_STEPS
  assert {k: v for k, v in got.items() if k not in UNEQUAL} == {
      k: v for k, v in want.items() if k not in UNEQUAL}
  # Each evaluation recorded once, as in the uninterrupted run.
  assert (victim_dir / "metrics.jsonl").read_text() == (
      ref_dir / "metrics.jsonl").read_text()
  with Store(tmp_path / "victim" / "m.db") as s:
    attempts = s.results("quickstart", latest_only=False)
    assert [(r["attempt"], r["status"]) for r in attempts] == [
        (1, "failed"), (2, "done")]
    assert "taken over by attempt 2" in attempts[0]["error"]
    history = s.eval_history(attempts[1]["run_id"])
  with Store(tmp_path / "reference" / "m.db") as s:
    (ref,) = s.results("quickstart")
    assert history == s.eval_history(ref["run_id"])
  assert [r["step"] for r in history] == list(range(EVAL_EVERY, NUM_STEPS + 1,
                                                    EVAL_EVERY))
