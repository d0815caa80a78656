"""The PyTorch MMoE of `benchmarks.peers` mirrors the JAX one.

Why: the peers benchmark compares step times, which means something only
when both sides train the same model.  With the JAX initial weights copied
into the PyTorch `MMoENet`, the two must agree on the parameter count, the
per-task losses, the `mean` step's shared gradient, and the rows of J in
both gradient modes (params: embeddings + experts + gates; rep: each task's
gate-mixed representation), compared through their Gramians, which do not
depend on how either side orders the parameters.  Skipped without torch
(the `bench` extra; CI installs only `test`).
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` is not an installed package
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import peers, torch_mtl  # noqa: E402
from mtrec_jax.train.step import task_losses  # noqa: E402

BATCH = 16


@pytest.fixture(scope="module")
def pair():
  return peers.mmoe_pair(BATCH)


def jax_losses(pair, params):
  out = pair.model.apply({"params": params}, pair.batch)
  return task_losses(out, pair.batch, pair.tasks)


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_parameter_counts_agree(pair):
  assert pair.torch_params == pair.jax_params > 0
  net = pair.make_torch()
  shared = sum(p.numel() for p in net.shared_parameters())
  jax_shared = peers.param_count(pair.params["shared"])
  assert shared == jax_shared  # rows of J over the same parameter set


def test_losses_agree(pair):
  step = peers.torch_step(pair, "mean", "loss")
  torch_losses = [float(l.detach()) for l in step.losses()]
  np.testing.assert_allclose(torch_losses, np.asarray(jax_losses(
      pair, pair.params)), rtol=1e-5, atol=1e-6)


def test_mean_step_gradient_agrees(pair):
  step = peers.torch_step(pair, "mean", "loss").step()
  grads = jax.jit(jax.grad(lambda p: jnp.mean(jax_losses(pair, p))))(
      pair.params)
  names = [t.name for t in pair.tasks]
  got, want = [], []
  for p, g in peers.jax_param_pairs(step.model, grads, names):
    got.append(p.grad.detach().numpy().ravel())
    want.append(g.ravel())
  assert rel(np.concatenate(got), np.concatenate(want)) < 1e-4


def test_params_mode_jacobian_agrees(pair):
  step = peers.torch_step(pair, "mgda", "params")
  rows = step.per_task_grads(step.losses()).numpy()
  jac = jax.jit(jax.jacrev(
      lambda s: jax_losses(pair, {**pair.params, "shared": s})))(
          pair.params["shared"])
  flat = np.concatenate([np.asarray(x).reshape(len(pair.tasks), -1)
                         for x in jax.tree_util.tree_leaves(jac)], axis=1)
  assert rows.shape == flat.shape
  assert rel(rows @ rows.T, flat @ flat.T) < 1e-4


def test_rep_mode_rows_agree(pair):
  step = peers.torch_step(pair, "mgda", "rep")
  _, _, rows = step.per_task_rep_grads()
  rep = pair.model.apply({"params": pair.params}, pair.batch,
                         method="represent")

  def heads(r):
    out = pair.model.apply({"params": pair.params}, r, method="heads")
    return jnp.sum(task_losses(out, pair.batch, pair.tasks))

  want = np.asarray(jax.grad(heads)(rep)).reshape(len(pair.tasks), -1)
  assert rel(rows.numpy(), want) < 1e-4


def test_pcgrad_weights_match_the_projection():
  rng = np.random.default_rng(0)
  jac = rng.normal(size=(3, 50)).astype(np.float32)
  jac[0] -= 1.5 * jac[1]
  orders = [[2, 1, 0], [0, 2, 1], [1, 0, 2]]
  gram = jac.astype(np.float64) @ jac.T.astype(np.float64)
  want = torch_mtl.pcgrad_update(torch.from_numpy(jac), orders).numpy()
  assert rel(torch_mtl.pcgrad_weights(gram, orders) @ jac, want) < 1e-5


@pytest.mark.parametrize("mode", ["params", "rep"])
def test_every_strategy_steps(pair, mode):
  for name in peers.STRATEGIES[1:]:
    step = peers.torch_step(pair, name, mode)
    before = [p.detach().clone() for p in step.model.parameters()]
    step.step().step()
    moved = [not torch.equal(a, p) for a, p in
             zip(before, step.model.parameters())]
    assert all(moved), name
    if step.last_weights is not None:  # None: PCGrad's projection recipe
      assert np.all(np.isfinite(step.last_weights)), name
