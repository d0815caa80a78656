"""MoDo's and SDMGrad's independent batches in the train step
(`mtrec_jax/weighting/sampling.py`, `train/step.py`): on three distinct
batches one step equals a NumPy reference of the papers' rules (weights from
the cross Gramian J_1 J_2^T of two batches, applied to the third batch's
Jacobian), with per-task Jacobians taken independently (one `jax.grad` per
task through the whole model); with three identical batches it is the
one-batch step; the loop feeds the batches; clear errors."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtrec_jax.weighting as W
from mtrec_jax import config as config_lib
from mtrec_jax.train import loop
from mtrec_jax.train.step import make_train_step, task_losses
from mtrec_jax.weighting import sampling

try:
  from tests.weighting import reference_new as refn
except ImportError:  # tests/ not importable as a package.
  import reference_new as refn  # type: ignore[no-redef]

# Hyper-parameters that make the weights move visibly in one step (MoDo's
# torchjd default gamma = 0.1 barely moves lambda on these small gradients).
# SDMGrad's defaults (lr 10, 20 steps) reach the same simplex vertex from
# both Gramians on these two tasks, so a short inner run is used.
CASES = [("modo", {"gamma": 20.0, "rho": 0.1}),
         ("sdmgrad", {"lr": 1.0, "n_iter": 2})]


def _config(name, **overrides):
  cfg = config_lib.apply_overrides(config_lib.base_config(), {
      "data.name": "mmoe_synthetic", "model.name": "shared_bottom",
      "model.bottom_hidden": (16,), "model.tower_hidden": (8,),
      "train.batch_size": 32, "strategy.name": name})
  with cfg.data.ignore_type():
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 256, 64, 64
  return config_lib.apply_overrides(cfg, overrides)


def _components(name, hparams):
  return loop.Components(_config(name, **{"strategy.hparams": hparams}))


def _batches(c, n=3):
  rows = c.dataset.splits["train"]
  return [{k: v[32 * i:32 * (i + 1)] for k, v in rows.items()}
          for i in range(n)]


def _reference_jacobian(c, params, batch):
  """[K, P] shared-parameter Jacobian (float64) and each tower's own
  gradient: `jax.jacrev` of the K losses of the whole model (not the train
  step's split engine)."""
  def losses(p, b):
    out = c.model.apply({"params": p}, b, train=True,
                        rngs={"dropout": jax.random.PRNGKey(0)})
    return task_losses(out, b, c.tasks)
  jac = jax.jit(jax.jacrev(losses))(params, batch)
  k = len(c.tasks)
  flat = np.stack([np.asarray(jax.flatten_util.ravel_pytree(
      jax.tree_util.tree_map(lambda x, i=i: x[i], jac["shared"]))[0],
      np.float64) for i in range(k)])
  towers = {t.name: jax.tree_util.tree_map(lambda x, i=i: x[i],
                                           jac["towers"][t.name])
            for i, t in enumerate(c.tasks)}
  return flat, towers


def _reference_weights(name, hparams, gram):
  if name == "modo":
    return refn.modo_weights(gram, **hparams)
  return refn.sdmgrad_weights(gram, lr=hparams["lr"],
                              n_iter=hparams["n_iter"])[0]


def _one_step(c, strategy, batch):
  sgd = optax.sgd(1.0)  # the update is minus the gradient
  state = loop.init_state(c)
  state = state.replace(opt_state=sgd.init(state.params),
                        strategy_state=strategy.init_state(len(c.tasks)))
  step = jax.jit(make_train_step(c.model, c.tasks, strategy, sgd))
  new, metrics = step(state, batch)
  assert int(new.diverged_step) == -1
  return state, new, metrics


def _shared_update(old, new):
  flat = lambda p: np.asarray(jax.flatten_util.ravel_pytree(p["shared"])[0],
                              np.float64)
  return flat(old.params) - flat(new.params)


@pytest.mark.parametrize("name,hparams", CASES)
def test_three_batches_match_the_papers_rule(name, hparams):
  c = _components(name, hparams)
  assert isinstance(c.strategy, sampling.DoubleSampledStrategy)
  b3, b1, b2 = _batches(c)  # own batch (the update), then the two samples
  fed = sampling.with_extra_batches(b3, {"sample1:": b1, "sample2:": b2})
  old, new, metrics = _one_step(c, c.strategy, fed)

  j1, _ = _reference_jacobian(c, old.params, b1)
  j2, _ = _reference_jacobian(c, old.params, b2)
  j3, towers3 = _reference_jacobian(c, old.params, b3)
  want_w = _reference_weights(name, hparams, j1 @ j2.T)
  got_w = np.array([float(metrics[f"weight/{t.name}"]) for t in c.tasks])
  np.testing.assert_allclose(got_w, want_w, rtol=1e-4, atol=1e-6)
  update = _shared_update(old, new)
  want = want_w @ j3
  np.testing.assert_allclose(update, want, rtol=1e-4,
                             atol=1e-5 * np.abs(want).max())
  # Towers: their own task's gradient on the update batch (unweighted).
  for t in c.tasks:
    jax.tree_util.tree_map(
        lambda o, n, g: np.testing.assert_allclose(o - n, g, rtol=1e-4,
                                                   atol=1e-7),
        old.params["towers"][t.name], new.params["towers"][t.name],
        towers3[t.name])
  # The cosines logged stay those of the update batch.
  cos = (j3 @ j3.T)[0, 1] / np.sqrt((j3 @ j3.T)[0, 0] * (j3 @ j3.T)[1, 1])
  names = [t.name for t in c.tasks]
  np.testing.assert_allclose(float(metrics[f"cos/{names[0]}/{names[1]}"]),
                             cos, rtol=1e-4)

  # The one-batch variant weighs with J_3 J_3^T: different weights here.
  one = W.build(name, **hparams, independent_batches=False)
  assert not isinstance(one, sampling.DoubleSampledStrategy)
  _, new1, metrics1 = _one_step(c, one, b3)
  want1 = _reference_weights(name, hparams, j3 @ j3.T)
  got1 = np.array([float(metrics1[f"weight/{t.name}"]) for t in c.tasks])
  np.testing.assert_allclose(got1, want1, rtol=1e-4, atol=1e-6)
  assert np.abs(want1 - want_w).max() > 1e-2, (want1, want_w)
  assert np.abs(_shared_update(old, new1) - update).max() > 1e-3 * np.abs(
      update).max()


@pytest.mark.parametrize("name,hparams", CASES)
def test_identical_batches_give_the_one_batch_step(name, hparams):
  c = _components(name, hparams)
  (b,) = _batches(c, 1)
  _, new, _ = _one_step(c, c.strategy, sampling.with_extra_batches(
      b, {"sample1:": b, "sample2:": b}))
  _, new1, _ = _one_step(c, W.build(name, **hparams,
                                    independent_batches=False), b)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      (new.params, new.strategy_state), (new1.params, new1.strategy_state))


def test_missing_samples_is_a_clear_error():
  c = _components("modo", {})
  with pytest.raises(ValueError, match="with_extra_batches"):
    _one_step(c, c.strategy, _batches(c, 1)[0])


def test_rep_mode_and_aggregate_use_the_one_batch():
  """No cross Gramian in rep mode (the loop feeds nothing) and in
  `aggregate` (unchanged: the one Jacobian's Gramian)."""
  modo = W.build("modo")
  assert sampling.extra_batches(modo, "params") == ("train",
                                                    sampling.SAMPLE_PREFIXES)
  assert sampling.extra_batches(modo, "rep") == ("train", ())
  assert sampling.extra_batches(W.build("modo", independent_batches=False),
                                "params") == ("train", ())
  assert sampling.extra_batches(W.build("mgda"), "params") == ("train", ())
  assert sampling.extra_batches(W.build("auto_lambda", meta_split="val"),
                                "params") == ("val", ("meta:",))
  jac = np.random.default_rng(0).normal(size=(3, 6))
  np.testing.assert_allclose(np.asarray(W.aggregate("modo", jnp.asarray(
      jac, jnp.float32))), refn.modo(jac), rtol=1e-5, atol=1e-6)
  c = loop.Components(_config("modo", **{"strategy.mode": "rep"}))
  sgd = optax.sgd(0.1)
  state = loop.init_state(c)
  state = state.replace(opt_state=sgd.init(state.params))
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, sgd, "rep"))
  new, _ = step(state, _batches(c, 1)[0])
  assert int(new.diverged_step) == -1


def test_split_and_merge_extra_batches():
  b = {"x": np.arange(3)}
  merged = sampling.with_extra_batches(b, {"sample1:": {"x": np.ones(3)},
                                           "sample2:": {"x": np.zeros(3)}})
  own, (s1, s2) = sampling.split_extra_batches(merged,
                                               sampling.SAMPLE_PREFIXES)
  np.testing.assert_array_equal(own["x"], b["x"])
  np.testing.assert_array_equal(s1["x"], np.ones(3))
  np.testing.assert_array_equal(s2["x"], np.zeros(3))
  assert sampling.split_extra_batches(b, ("sample1:",))[1] == [None]
  with pytest.raises(ValueError, match="already start with"):
    sampling.with_extra_batches(merged, {"sample1:": b})


def test_the_loop_feeds_the_samples(tmp_path, monkeypatch, name="modo"):
  """`train_and_evaluate`: each step gets the training stream's batch t and
  batches 2t, 2t + 1 of the second shuffle (seed + META_SEED_OFFSET)."""
  from mtrec_jax.data.pipeline import StepBatches
  fed = []
  real = loop.parallel.shard_batch

  def spy(batch, mesh):
    fed.append({k: np.asarray(v) for k, v in batch.items()})
    return real(batch, mesh)
  monkeypatch.setattr(loop.parallel, "shard_batch", spy)
  cfg = _config(name, **{"train.num_steps": 3, "train.eval_every": 3,
                         "train.log_every": 3})
  res = loop.train_and_evaluate(cfg, tmp_path, experiment="t",
                                grid={"seed": 0}, progress=False)
  assert res["status"] == "done" and res["steps"] == 3
  assert np.isfinite(res["metrics"]["val/loss"])
  c = loop.Components(cfg)
  train = c.dataset.splits["train"]
  own = StepBatches(train, 32, cfg.seed)
  extra = StepBatches(train, 32, cfg.seed + loop.META_SEED_OFFSET)
  assert len(fed) == 3
  for t, batch in enumerate(fed):
    mine, (s1, s2) = sampling.split_extra_batches(batch,
                                                  sampling.SAMPLE_PREFIXES)
    for got, want in ((mine, own(t)), (s1, extra(2 * t)),
                      (s2, extra(2 * t + 1))):
      assert set(got) == set(want)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_independent_batches_must_be_a_bool(name):
  """``--set strategy.hparams.independent_batches=false`` gives the string
  'false', which would count as true."""
  with pytest.raises(ValueError, match="must be True or False"):
    W.build(name, independent_batches="false")
