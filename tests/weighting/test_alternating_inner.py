"""`alternating` over inner strategies with per-parameter row state (MoCo,
MetaBalance): the state is built from the row shape, the per-tensor and
representation forms are forwarded, and the result equals the inner
strategy run directly on the masked Jacobian."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtrec_jax.weighting as W
from mtrec_jax import config as config_lib
from mtrec_jax.train import loop
from mtrec_jax.train.step import make_train_step
from mtrec_jax.weighting.base import apply_strategy


def _stacked(seed, k=3):
  rng = np.random.default_rng(seed)
  return {"a": jnp.asarray(rng.normal(size=(k, 4, 2)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(k, 5)) * 10, jnp.float32)}


def _row(stacked):
  return jax.tree_util.tree_map(lambda g: g[0], stacked)


def _masked(stacked, task):
  return jax.tree_util.tree_map(
      lambda g: g * (jnp.arange(g.shape[0]) == task).reshape(
          (-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), stacked)


@pytest.mark.parametrize("inner,hparams", [
    ("metabalance", {"granularity": "tensor"}),  # aggregate_tree
    ("moco", {}),                                    # flat aggregate
])
def test_round_robin_over_row_state_inner_equals_inner_on_masked_rows(
    inner, hparams):
  """Three steps of round-robin over tasks 0, 1, 2: the update and the
  inner state are those of the inner strategy on the Jacobian whose inactive
  rows are zero, and the reported weights are the one-hot mask."""
  s = W.build("alternating", inner=inner, inner_hparams=hparams)
  ref = W.build(inner, **hparams)
  assert s.row_state and s.kind == "jacobian"
  assert (s.aggregate_tree is None) == (ref.aggregate_tree is None)
  grads = [_stacked(seed) for seed in range(3)]
  state = s.init_state(3, row=_row(grads[0]))
  ref_state = ref.init_state(3, row=_row(grads[0]))
  losses = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
  for t in range(3):
    got, out = apply_strategy(s, state, losses=losses, stacked_grads=grads[t],
                              step=t)
    want, ref_out = apply_strategy(ref, ref_state, losses=losses,
                                   stacked_grads=_masked(grads[t], t), step=t)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        got, want)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        out.state["inner"], ref_out.state)
    np.testing.assert_array_equal(out.weights, np.eye(3)[t])
    assert int(out.metrics["active_task"]) == t
    state, ref_state = out.state, ref_out.state


def test_row_state_inner_needs_the_row():
  s = W.build("alternating", inner="moco")
  with pytest.raises(ValueError, match="row="):
    s.init_state(2)
  # An inner strategy without row state ignores the row, as before.
  plain = W.build("alternating", inner="mgda")
  assert not plain.row_state
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         plain.init_state(2, row=7),
                         {"inner": W.build("mgda").init_state(2)})


def test_rep_mode_forwards_the_inner_refusal():
  """MoCo has no representation form; through `alternating` the train step
  must get MoCo's refusal, not run MoCo's flat aggregate on rep rows."""
  s = W.build("alternating", inner="moco")
  assert s.aggregate_rep is not None
  with pytest.raises(ValueError, match="set strategy.mode=params"):
    s.aggregate_rep({"inner": None}, rep_grads=jnp.ones((2, 3, 4)), rep=None,
                    losses=jnp.ones(2), step=0, key=None)


def test_rep_mode_forwards_the_inner_representation_form():
  """MetaBalance's representation form, through `alternating` at step 1
  (task 1 active): the inner's cotangents of the masked rep gradients."""
  s = W.build("alternating", inner="metabalance")
  ref = W.build("metabalance")
  rep_grads = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5)),
                          jnp.float32)
  mask = jnp.asarray([0.0, 1.0, 0.0])[:, None, None]
  cot, out = s.aggregate_rep(s.init_state(3, row=5), rep_grads=rep_grads,
                             rep=None, losses=jnp.ones(3), step=1, key=None)
  want, ref_out = ref.aggregate_rep(ref.init_state(3, row=5),
                                    rep_grads=rep_grads * mask, rep=None,
                                    losses=jnp.ones(3), step=1, key=None)
  np.testing.assert_allclose(cot, want, rtol=1e-6)
  np.testing.assert_allclose(out.state["inner"]["norms"],
                             ref_out.state["norms"], rtol=1e-6)
  np.testing.assert_array_equal(out.weights, [0.0, 1.0, 0.0])


def test_alternating_over_moco_trains():
  """Through the loop's components and the jitted train step: the state is
  shaped by params['shared'], three steps stay finite, the inactive task's
  tower does not move, and MoCo's tracked gradients fill only the active
  tasks' rows."""
  cfg = config_lib.apply_overrides(config_lib.base_config(), {
      "model.name": "mmoe", "data.name": "mmoe_synthetic",
      "strategy.name": "alternating", "strategy.hparams.inner": "moco"})
  c = loop.Components(cfg)
  state = loop.init_state(c)
  k = len(c.tasks)
  p = sum(x.size for x in jax.tree_util.tree_leaves(state.params["shared"]))
  assert state.strategy_state["inner"]["y"].shape == (k, p)
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer))
  batch = {key: v[:64] for key, v in c.dataset.splits["train"].items()}
  before = state
  state, metrics = step(state, batch)  # step 0: task 0 only
  assert int(state.diverged_step) == -1
  assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
  y = np.asarray(state.strategy_state["inner"]["y"])
  assert np.abs(y[0]).max() > 0 and np.abs(y[1:]).max() == 0
  name1 = c.tasks[1].name
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         state.params["towers"][name1],
                         before.params["towers"][name1])
  state, _ = step(state, batch)  # step 1: task 1
  y = np.asarray(state.strategy_state["inner"]["y"])
  assert np.abs(y[1]).max() > 0
