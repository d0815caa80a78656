"""`mtrec run` in a SLURM array job takes its shard from the array task
(issue 16 item 4): without --shard, task k of ``--array=MIN-MAX[:STEP]`` is
shard (k - MIN) / STEP of SLURM_ARRAY_TASK_COUNT."""
from __future__ import annotations

import pytest

from mtrec_jax import sweep


def _env(task, count, low=None, high=None, step=None):
  env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT":
         str(count), "SLURM_JOB_ID": "77"}
  for key, value in (("MIN", low), ("MAX", high), ("STEP", step)):
    if value is not None:
      env[f"SLURM_ARRAY_TASK_{key}"] = str(value)
  return env


@pytest.mark.parametrize("env, want", [
    (_env(0, 8, 0, 7), (0, 8)),
    (_env(7, 8, 0, 7), (7, 8)),
    (_env(1, 8, 1, 8), (0, 8)),  # --array=1-8
    (_env(8, 8, 1, 8), (7, 8)),
    (_env(6, 4, 0, 9, 3), (2, 4)),  # --array=0-9:3 -> ids 0, 3, 6, 9
    (_env(3, 4), (3, 4)),  # no MIN/MAX/STEP: ids count from 0
    (_env(5, 1, 5, 5), (0, 1)),  # --array=5: one task
])
def test_array_task_is_a_shard(env, want):
  assert sweep.array_job_shard(env) == want


def test_outside_an_array_job_there_is_no_shard():
  assert sweep.array_job_shard({}) is None
  assert sweep.array_job_shard({"SLURM_JOB_ID": "77"}) is None  # not array
  assert sweep.array_job_shard({"SLURM_ARRAY_TASK_ID": ""}) is None


@pytest.mark.parametrize("env, match", [
    (_env(4, 3, 1, 9), "not a range"),  # --array=1,4,9
    (_env(2, 4, 0, 9, 3), "not a range"),  # not one of 0, 3, 6, 9
    (_env("x", 4), "cannot read"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, "cannot read"),  # no count
    (_env(5, 4, 0, 3), "not a range"),  # id past MAX
])
def test_an_array_that_gives_no_shard_names_the_fix(env, match):
  with pytest.raises(ValueError, match=match) as e:
    sweep.array_job_shard(env)
  assert "--shard" in str(e.value) and "SLURM array task" in str(e.value)


def test_run_without_shard_reads_the_array_task(monkeypatch):
  """`mtrec run` (the CLI and `mtrec_jax.sweep`) turns a missing --shard
  into `parse_shard(None)`; an explicit --shard wins."""
  for key, value in _env(3, 4, 1, 4).items():
    monkeypatch.setenv(key, value)
  assert sweep.parse_shard(None) == (2, 4)
  assert sweep.parse_shard("0/2") == (0, 2)
  monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
  assert sweep.parse_shard(None) == (0, 1)
