"""Data parallelism: sharded training equals one-device training.

The multi-device cases run in one subprocess (tests/train/parallel_worker.py)
with 8 fake CPU devices, since the device count is fixed when JAX starts and
the other tests keep one device; one process shares start-up and the
one-device reference runs between cases (about 35 s of CPU in all; the
tests that read it are marked slow).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mtrec_jax.train import parallel

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).with_name("parallel_worker.py")
CASES = ("mean", "pcgrad", "gradnorm_rep", "embed_sharded", "pmap_mean",
         "pmap_pcgrad", "pmap_rep_refused", "non_divisible")
# Sums over 8 shards are added in another order than over one batch: the
# results agree to float32 rounding, amplified a little by 5 Adam steps.
RTOL = 1e-5


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0",
             PYTHONPATH=os.pathsep.join(
                 p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, str(WORKER), *CASES], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  out = {}
  for line in proc.stdout.splitlines():
    if line.startswith("{"):
      case = json.loads(line)
      out[case["case"]] = case
  if set(out) != set(CASES):
    pytest.fail(f"worker exited {proc.returncode} with cases {sorted(out)} of "
                f"{CASES}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n"
                f"{proc.stderr[-4000:]}")
  return out


def _check_equal(case: dict) -> None:
  assert "exception" not in case, case["exception"]
  assert case["devices"] == 8
  assert case["moved"] > 1e-3  # training changed the parameters at all
  assert case["loss_diff"] <= RTOL * 10, case       # losses are O(1)
  assert case["state_diff"] <= RTOL * max(1.0, case["state_scale"]), case


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mean", "pcgrad", "gradnorm_rep"])
def test_mesh_training_matches_one_device(results, name):
  case = results[name]
  _check_equal(case)
  assert case["batch_rows_per_device"] == 32 // 8
  assert case["sharded_leaves"] == []  # parameters replicated


@pytest.mark.slow
def test_embedding_tables_sharded_over_model_axis(results):
  case = results["embed_sharded"]
  _check_equal(case)
  assert case["batch_rows_per_device"] == 32 // 4  # a 4 x 2 mesh
  table = "['shared']['feature_encoder']['embed_c']"
  expected = [".params" + table, ".opt_state[0].mu" + table,
              ".opt_state[0].nu" + table]
  assert case["sharded_leaves"] == expected
  assert case["sharded_after_steps"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pmap_mean", "pmap_pcgrad"])
def test_pmap_path_matches_mesh_path(results, name):
  case = results[name]
  _check_equal(case)
  assert case["mesh_loss_diff"] <= RTOL * 10, case
  assert case["mesh_state_diff"] <= RTOL * max(1.0, case["state_scale"]), case


@pytest.mark.slow
def test_pmap_path_refuses_rep_mode(results):
  assert "rep mode" in results["pmap_rep_refused"]["error"]
  assert "jit_train_step" in results["pmap_rep_refused"]["error"]


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_a_clear_error(results):
  error = results["non_divisible"]["error"]
  assert error is not None
  assert "batch size 30" in error and "8 devices" in error
  assert "multiple of 8" in error


def test_one_device_mesh_and_shardings():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data", "model")
  assert mesh.shape == {"data": 1, "model": 1}
  batch = parallel.shard_batch({"x": np.ones((3, 2), np.float32)}, mesh)
  assert batch["x"].shape == (3, 2)
  tree = {"embed_c": np.zeros((4, 2)), "w": np.zeros(3)}
  specs = parallel.state_sharding(tree, mesh, shard_embeddings_over_model=True)
  assert all(s.is_fully_replicated for s in specs.values())
  with pytest.raises(ValueError, match="needs 2 devices"):
    parallel.make_mesh(data=2)
  with pytest.raises(ValueError, match="disagree on the batch size"):
    parallel.shard_batch({"x": np.ones(4), "y": np.ones(3)}, mesh)


@pytest.mark.parametrize("env, kind", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS":
      "16", "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, None),  # one task: local
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "coordinator"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({"MTREC_DISTRIBUTED": "1"}, "forced"),
    ({"MTREC_DISTRIBUTED": "0", "OMPI_COMM_WORLD_SIZE": "4"}, None),
])
def test_cluster_detection_reads_only_the_environment(env, kind):
  assert parallel.cluster_environment(env) == kind


def test_no_cluster_means_no_distributed_initialization():
  assert parallel.initialize_distributed({}) is False


def test_coordinator_launch_needs_process_count_and_id():
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "h:1"})


def test_process_slice_keeps_this_process_rows(monkeypatch):
  """Each of P processes keeps its contiguous 1/P of the global batch, in
  process order, so `shard_batch` reassembles exactly the global batch."""
  batch = {"x": np.arange(12).reshape(6, 2), "y": np.arange(6)}
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  parts = []
  for i in range(3):
    monkeypatch.setattr(jax, "process_index", lambda i=i: i)
    parts.append(parallel.process_slice(batch))
  for key, value in batch.items():
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                  value)
  assert [len(p["y"]) for p in parts] == [2, 2, 2]
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  with pytest.raises(ValueError, match="does not split over 4 processes"):
    parallel.process_slice(batch)
