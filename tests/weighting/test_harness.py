"""One shared harness for every registered weighting strategy.

Parameterised over `STRATEGIES.names()` (after importing
`mtrec_jax.weighting`, which registers them all), so a new strategy is covered
as soon as it is registered.  Each strategy is built with its default
hyper-parameters and checked for:

* training: `as_optax(strategy, K)` chained with Adam runs under `jax.jit`
  (compiled once, ahead of time) for a few steps of a small quadratic
  multi-task problem (stacked per-task gradients of a two-leaf pytree with
  P = 2 parameters < K = 3 tasks, extras ``task_losses``, ``step`` and
  ``key``) with finite updates and a state whose types do not change;
* checkpointing: the optimiser state round-trips through an Orbax checkpoint
  and the restored state gives the identical next update;
* properties, in float32 and float64, on one batch of [K, P] = [3, 50]
  Jacobians (one compilation per strategy and dtype): finite output on random
  and degenerate Jacobians (zero rows, all zero, identical rows, opposite
  rows, rank 2 (the Gramian of K > P), row norms from 1e-10 to 1e10, all
  tiny, all huge); permutation equivariance (permuting the tasks leaves the
  update unchanged) except for the strategies listed, with the reason, in
  `NOT_PERMUTATION_EQUIVARIANT`; non-conflicting updates
  (``J g >= -tol ||J|| ||g||``, plus the solver's ridge) for those in
  `NON_CONFLICTING`; and, for the strategies with an independent reference
  in `reference.py`, agreement with it on the random cases (K = 3).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import mtrec_jax.weighting as W
from mtrec_jax.registry import STRATEGIES

try:
  from tests.weighting import reference as ref
except ImportError:  # tests/ not importable as a package.
  import reference as ref  # type: ignore[no-redef]

NAMES = STRATEGIES.names()
K = 3  # tasks

# Strategies whose update depends on the order of the tasks, with the reason.
NOT_PERMUTATION_EQUIVARIANT = {
    "alternating": "trains task schedule[step mod len] at each step: the "
                   "task index decides which gradient is used",
    "rlw": "draws random weights per task index from the key",
    "pcgrad": "aggregate(key=None) projects in the fixed order 0..K-1, and "
              "the projections do not commute",
    "gradvac": "aggregate(key=None) visits tasks in the fixed order 0..K-1, "
               "and the corrections do not commute",
    "max": "aggregate's losses are all equal, and the tie for the largest "
           "loss is broken by task index",
    "metabalance": "task 0 is the main task, the others auxiliary: the task "
                   "index decides which gradient sets the target norm",
}

# Strategies whose docstring or paper promises J g >= 0 (no task's loss
# increases to first order), with the ridge r their solver adds to the
# trace-normalised Gramian: the promise then reads
# (J g)_k >= -r trace(G) w_k for the weights w >= 0 of g = J^T w.
# MGDA: min-norm point of the convex hull; UPGrad / DualProj: projections
# onto the dual cone (torchjd's ridge 1e-4, which relaxes the constraints of
# tasks with tiny gradients); Nash-MTL: g_k . g = 1 / alpha_k > 0.
# FairGrad: G w = w^(-1/alpha) with w > 0 gives g_k . g = w_k^(-1/alpha) > 0
# (ridge 1e-5 in float32); ConFIG: equal positive cosines with every task;
# CR-MOGM: its default inner strategy is MGDA (a convex combination of
# non-conflicting weights stays non-conflicting).
NON_CONFLICTING = {"mgda": 0.0, "upgrad": 1e-4, "dualproj": 1e-4,
                   "nash_mtl": 0.0, "fairgrad": 1e-5, "config": 0.0,
                   "cr_mogm": 0.0}


# Hyper-parameters a strategy cannot default outside the train loop, which
# fills them: DWA's epoch length (steps_per_epoch; any value checks it here).
HPARAMS = {"dwa": {"steps_per_epoch": 2}}


def test_registry_is_not_empty():
  assert len(NAMES) >= 5
  for name in ("mgda", "upgrad", "dualproj", "cagrad", "nash_mtl"):
    assert name in NAMES
  for name in (set(NOT_PERMUTATION_EQUIVARIANT) | set(NON_CONFLICTING) |
               set(HPARAMS)):
    assert name in NAMES, f"stale entry {name!r} in the harness's lists"


# --------------------------------------------------------------------------
# Training under jit and checkpointing.
# --------------------------------------------------------------------------

# Task k: L_k = 1/2 a_k (w - c_k)^2 + 1/2 b_k (v - d_k)^2 + 1/2, for the
# params {"w": [1], "v": []}; positive losses, conflicting minimisers.
_A = np.array([1.0, 2.0, 0.5], np.float32)
_B = np.array([0.5, 1.0, 3.0], np.float32)
_C = np.array([1.0, -1.0, 0.5], np.float32)
_D = np.array([-0.5, 1.0, 0.2], np.float32)


def _task_loss(params, k):
  w, v = params["w"][0], params["v"]
  a, b, c, d = (jnp.asarray(x)[k] for x in (_A, _B, _C, _D))
  return 0.5 * a * (w - c) ** 2 + 0.5 * b * (v - d) ** 2 + 0.5


def _make_step(strategy):
  tx = optax.chain(W.as_optax(strategy, K), optax.adam(1e-2))

  def step(params, opt_state, i):
    ks = jnp.arange(K)
    losses = jax.vmap(lambda k: _task_loss(params, k))(ks)
    grads = jax.vmap(lambda k: jax.grad(_task_loss)(params, k))(ks)
    updates, opt_state = tx.update(
        grads, opt_state, params, task_losses=losses, step=i,
        key=jax.random.fold_in(jax.random.PRNGKey(0), i))
    return optax.apply_updates(params, updates), opt_state, updates, losses

  return tx, step


def _compile(step, params, opt_state):
  """``jax.jit(step)`` compiled ahead of time for these argument types, at
  XLA backend optimisation level 0 (~40% faster to compile).  Calling it with
  arguments of other types raises, so it also checks that the strategy state
  keeps its types from step to step."""
  return jax.jit(step).lower(params, opt_state, jnp.int32(0)).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def _init_params():
  return {"w": jnp.zeros((1,), jnp.float32), "v": jnp.zeros((), jnp.float32)}


def _strong(tree):
  """The tree with weak types made strong (same dtypes)."""
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, x.dtype), tree)


def _signature(tree):
  return jax.tree_util.tree_map(
      lambda x: (x.shape, str(x.dtype), bool(getattr(x, "weak_type", False))),
      tree)


@pytest.mark.parametrize("name", NAMES)
def test_trains_under_jit_and_checkpoints(name, tmp_path):
  strategy = W.build(name, **HPARAMS.get(name, {}))
  tx, step = _make_step(strategy)
  params = _init_params()
  # NOTE: `as_optax`'s init state holds weakly typed weights
  # (``jnp.full(.., 1.0 / K)``) that become strongly typed after the first
  # update, which would retrace the train step once; `_strong` removes that
  # (and the check below catches any other change of the state's types).
  opt_state = _strong(tx.init(params))
  signature = _signature(opt_state)
  step = _compile(step, params, opt_state)
  for i in range(4):
    params, opt_state, updates, losses = step(params, opt_state, jnp.int32(i))
    for leaf in jax.tree_util.tree_leaves((updates, losses, opt_state)):
      assert np.all(np.isfinite(np.asarray(leaf))), (name, i)
    assert _signature(opt_state) == signature, (
        f"{name}: the strategy state changed shape or dtype at step {i}")

  # Round trip through an Orbax checkpoint.
  ckpt = {"params": params, "opt_state": opt_state}
  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "ckpt"
  checkpointer.save(path, ckpt)
  checkpointer.wait_until_finished()
  target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, ckpt)
  restored = checkpointer.restore(path, target)
  checkpointer.close()
  assert (jax.tree_util.tree_structure(restored)
          == jax.tree_util.tree_structure(ckpt))
  for a, b in zip(jax.tree_util.tree_leaves(restored),
                  jax.tree_util.tree_leaves(ckpt)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The restored state gives the identical next update.
  _, _, expected, _ = step(params, opt_state, jnp.int32(4))
  _, _, got, _ = step(restored["params"], restored["opt_state"], jnp.int32(4))
  for a, b in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------
# Properties on random and degenerate Jacobians.
# --------------------------------------------------------------------------

P = 50
PERM = np.array([2, 0, 1])


def _property_batch() -> tuple[np.ndarray, dict[str, int]]:
  """[B, K, P] Jacobians and the index of each named case.  "random_p4" has
  P = 4 nonzero columns (zero-padded; the padding must stay zero)."""
  rng = np.random.default_rng(0)
  cases = {}
  cases["random_p4"] = np.zeros((K, P))
  cases["random_p4"][:, :4] = rng.normal(size=(K, 4))
  for i in range(2):
    cases[f"random{i}"] = rng.normal(size=(K, P))
  cases["random_spread"] = rng.normal(size=(K, P)) * np.array(
      [[0.1], [1.0], [10.0]])
  for name in list(cases):
    cases[name + "_perm"] = cases[name][PERM]
  j = rng.normal(size=(K, P))
  j[1] = 0.0
  cases["zero_row"] = j
  cases["all_zero"] = np.zeros((K, P))
  j = rng.normal(size=(K, P))
  j[2] = j[0]
  cases["identical_rows"] = j
  j = rng.normal(size=(K, P))
  j[1] = -j[0]
  cases["opposite_rows"] = j
  cases["rank2"] = rng.normal(size=(K, 2)) @ rng.normal(size=(2, P))
  cases["norms_1e-10_to_1e10"] = rng.normal(size=(K, P)) * np.array(
      [[1e-10], [1.0], [1e10]])
  cases["tiny"] = 1e-10 * rng.normal(size=(K, P))
  cases["huge"] = 1e10 * rng.normal(size=(K, P))
  names = list(cases)
  return np.stack([cases[n] for n in names]), {n: i for i, n in
                                               enumerate(names)}


JACOBIANS, CASES = _property_batch()


@functools.lru_cache(maxsize=None)
def _batched(name: str, dtype_name: str):
  """`aggregate` vmapped over the property batch, jitted ahead of time at XLA
  backend optimisation level 0 (compiles ~40% faster; same semantics)."""
  hparams = HPARAMS.get(name, {})
  fn = jax.jit(jax.vmap(lambda j: W.aggregate(name, j, **hparams)))
  example = jax.ShapeDtypeStruct(JACOBIANS.shape, jnp.dtype(dtype_name))
  return fn.lower(example).compile(
      compiler_options={"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("name", NAMES)
def test_properties(name, dtype):
  fn = _batched(name, jnp.dtype(dtype).name)
  out = np.asarray(fn(jnp.asarray(JACOBIANS, dtype)), np.float64)
  assert out.shape == (len(JACOBIANS), P)
  bad = [c for c, i in CASES.items() if not np.all(np.isfinite(out[i]))]
  assert not bad, f"{name}: non-finite update for {bad}"

  np.testing.assert_array_equal(out[CASES["random_p4"], 4:], 0.0)

  tol = 1e-4 if dtype == jnp.float32 else 1e-7
  regular = [c for c in CASES if c.startswith("random") and
             not c.endswith("_perm")]
  if name in ref.REFERENCES:
    # Agreement with the independent reference, for K = 3 (K = 2 and 5 are
    # in test_gramian_strategies.py): cosine >= 0.999, norm within 2%.
    for case in regular:
      jac = JACOBIANS[CASES[case]]
      p = 4 if case == "random_p4" else P
      want = ref.REFERENCES[name](jac[:, :p])
      got = out[CASES[case], :p]
      cos = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
      assert cos >= 0.999, (name, case, cos)
      np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(want),
                                 rtol=0.02, err_msg=f"{name}: {case}")
  if name not in NOT_PERMUTATION_EQUIVARIANT:
    for case in regular:
      a, b = out[CASES[case]], out[CASES[case + "_perm"]]
      scale = np.linalg.norm(JACOBIANS[CASES[case]])
      np.testing.assert_allclose(b, a, atol=tol * scale,
                                 err_msg=f"{name}: {case} not equivariant")
  if name in NON_CONFLICTING:
    ridge = NON_CONFLICTING[name]
    for case in regular + ["identical_rows", "rank2"]:
      jac, g = JACOBIANS[CASES[case]], out[CASES[case]]
      slack = 1e-4 * np.linalg.norm(jac) * np.linalg.norm(g)
      if ridge:  # weights from the update (these rows are independent)
        if case not in regular:
          continue
        w = np.linalg.lstsq(jac.T, g, rcond=None)[0]
        slack = slack + ridge * np.sum(jac * jac) * np.maximum(w, 0.0)
      dots = jac @ g
      assert np.all(dots >= -slack), (name, case, dots, slack)
