"""Multi-device cases for test_parallel.py, run in a subprocess.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      python tests/train/parallel_worker.py CASE [CASE ...]

Each case trains a tiny shared-bottom model (K = 3 regression tasks) for a
few steps on one device (plain jit) and on a device mesh (or with pmap), from
the same initial state and batches, and prints one JSON line: the case name,
the largest absolute difference of the per-step losses and of the final
train state, and the largest absolute value of the compared states (the
scale for a relative tolerance).  A separate process, because the fake
device count must be set before JAX starts and the other tests keep one.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mtrec_jax import weighting  # noqa: E402
from mtrec_jax.models.build import build_model, default_model_config  # noqa: E402
from mtrec_jax.models.features import FeatureSpec  # noqa: E402
from mtrec_jax.tasks.spec import TaskSpec  # noqa: E402
from mtrec_jax.train import parallel  # noqa: E402
from mtrec_jax.train import state as state_lib  # noqa: E402
from mtrec_jax.train.step import make_train_step  # noqa: E402

K, STEPS, DIM, VOCAB = 3, 5, 16, 64


def setup(batch_size: int, categorical: bool = False):
  cfg = default_model_config()
  cfg.name = "shared_bottom"
  cfg.bottom_hidden = (32,)
  cfg.tower_hidden = (8,)
  features = [FeatureSpec("x", "numeric", dim=DIM)]
  if categorical:
    features.append(FeatureSpec("c", "categorical", vocab_size=VOCAB,
                                embed_dim=8))
  tasks = tuple(TaskSpec(f"t{i}", f"y{i}", "regression") for i in range(K))
  model = build_model(cfg, tuple(features),
                      tuple((t.name, t.out_dim) for t in tasks))
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(STEPS):
    b = {"x": rng.normal(size=(batch_size, DIM)).astype(np.float32)}
    if categorical:
      b["c"] = rng.integers(0, VOCAB, size=(batch_size,)).astype(np.int32)
    for i in range(K):
      b[f"y{i}"] = rng.normal(size=(batch_size,)).astype(np.float32)
    batches.append(b)
  params = model.init(jax.random.PRNGKey(0), batches[0])["params"]
  return model, tasks, batches, params


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) -
                                  np.asarray(y, np.float64))))
             for x, y in zip(jax.tree_util.tree_leaves(a),
                             jax.tree_util.tree_leaves(b)))


def _max_abs(tree) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64))))
             for x in jax.tree_util.tree_leaves(tree))


def _train(step, state, batches, put=lambda b: b):
  losses = []
  for b in batches:
    state, metrics = step(state, put(b))
    losses.append([float(metrics[f"loss/t{i}"]) for i in range(K)])
  return state, np.asarray(losses)


@functools.lru_cache(maxsize=None)
def reference(strategy_name: str, mode: str, categorical: bool,
              batch_size: int):
  """The one-device run (cached: the mesh and pmap cases of one strategy
  share it) and what it was built from."""
  model, tasks, batches, params = setup(batch_size, categorical)
  strategy = weighting.build(strategy_name)
  optimizer = optax.adam(1e-2)
  state0 = state_lib.create(params, optimizer, strategy, K,
                            jax.random.PRNGKey(1))
  step_fn = make_train_step(model, tasks, strategy, optimizer, mode)
  ref_state, ref_losses = _train(jax.jit(step_fn), state0, batches)
  ref_state = jax.device_get(ref_state)
  return (model, tasks, batches, params, strategy, optimizer, state0, step_fn,
          ref_state, ref_losses)


MESH_RUNS: dict = {}  # (strategy, mode) -> (state, losses) of the 8-way mesh


def compare(name: str, strategy_name: str, mode: str = "", *,
            path: str = "mesh", data: int = 8, model_axis: int = 1,
            shard_embeddings: bool = False, batch_size: int = 32,
            donate: bool = False) -> dict:
  """One-device training vs `path` ("mesh" or "pmap") on the same inputs."""
  start = time.perf_counter()
  (model, tasks, batches, params, strategy, optimizer, state0, step_fn,
   ref_state, ref_losses) = reference(strategy_name, mode, shard_embeddings,
                                      batch_size)
  info = {}
  if path == "mesh":
    mesh = parallel.make_mesh(data, model_axis)
    shardings = parallel.state_sharding(state0, mesh, shard_embeddings)
    state = jax.device_put(jax.tree_util.tree_map(np.array, state0), shardings)
    sharded_leaves = [
        jax.tree_util.keystr(p) for p, s in
        jax.tree_util.tree_leaves_with_path(shardings) if len(s.spec)]
    info["sharded_leaves"] = sharded_leaves
    step = parallel.jit_train_step(step_fn, mesh, shardings, donate=donate)
    state, losses = _train(step, state, batches,
                           lambda b: parallel.shard_batch(b, mesh))
    # What really ran split: rows of the batch per device, and the leaves
    # the step handed back sharded (out_shardings keep them so).
    shard = parallel.shard_batch(batches[0], mesh)["x"].addressable_shards[0]
    info["batch_rows_per_device"] = shard.data.shape[0]
    info["sharded_after_steps"] = [
        jax.tree_util.keystr(p) for p, x in
        jax.tree_util.tree_leaves_with_path(state)
        if not x.sharding.is_fully_replicated]
    if (data, model_axis, shard_embeddings) == (8, 1, False):
      MESH_RUNS[(strategy_name, mode)] = (state, losses)
  else:
    step = parallel.pmap_train_step(model, tasks, strategy, optimizer, mode,
                                    devices=jax.devices()[:data])
    state, losses = _train(step, state0, batches)
    if (strategy_name, mode) in MESH_RUNS:  # pmap vs the mesh path, directly
      mesh_state, mesh_losses = MESH_RUNS[(strategy_name, mode)]
      info["mesh_loss_diff"] = float(np.max(np.abs(losses - mesh_losses)))
      info["mesh_state_diff"] = _max_diff(state, mesh_state)
  state = jax.device_get(state)
  return {"case": name, "loss_diff": float(np.max(np.abs(losses - ref_losses))),
          "state_diff": _max_diff(state, ref_state),
          "state_scale": _max_abs(ref_state.params),
          "moved": _max_diff(ref_state.params, params),
          "devices": jax.device_count(),
          "seconds": round(time.perf_counter() - start, 2), **info}


def non_divisible() -> dict:
  """A batch of 30 on an 8-way data axis: shard_batch's error message."""
  mesh = parallel.make_mesh()
  batch = {"x": np.zeros((30, DIM), np.float32)}
  try:
    parallel.shard_batch(batch, mesh)
  except ValueError as e:
    return {"case": "non_divisible", "error": str(e)}
  return {"case": "non_divisible", "error": None}


def pmap_rep_refused() -> dict:
  model, tasks, _, _ = setup(32)
  try:
    parallel.pmap_train_step(model, tasks, weighting.build("mgda", mode="rep"),
                             optax.sgd(0.1))
  except ValueError as e:
    return {"case": "pmap_rep_refused", "error": str(e)}
  return {"case": "pmap_rep_refused", "error": None}


CASES = {
    "mean": lambda: compare("mean", "mean", donate=True),
    "pcgrad": lambda: compare("pcgrad", "pcgrad", "params"),
    # gradnorm's default mode is rep: the Gramian of the representation
    # gradients, whose rows the data axis splits.
    "gradnorm_rep": lambda: compare("gradnorm_rep", "gradnorm", "rep"),
    "gradnorm_params": lambda: compare("gradnorm_params", "gradnorm",
                                       "params"),
    "mgda_rep": lambda: compare("mgda_rep", "mgda", "rep"),
    "embed_sharded": lambda: compare("embed_sharded", "pcgrad", "params",
                                     data=4, model_axis=2,
                                     shard_embeddings=True),
    "pmap_mean": lambda: compare("pmap_mean", "mean", path="pmap"),
    "pmap_pcgrad": lambda: compare("pmap_pcgrad", "pcgrad", "params",
                                   path="pmap"),
    "pmap_rep_refused": pmap_rep_refused,
    "non_divisible": non_divisible,
}


def main(argv) -> int:
  names = argv or list(CASES)
  unknown = [n for n in names if n not in CASES]
  if unknown:
    print(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}",
          file=sys.stderr)
    return 2
  status = 0
  for name in names:
    try:
      out = CASES[name]()
    except Exception:  # reported per case, so one failure hides no other
      out = {"case": name, "exception": traceback.format_exc(limit=8)}
      status = 1
    print(json.dumps(out), flush=True)
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
