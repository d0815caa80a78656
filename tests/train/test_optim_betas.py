"""optimizer.b1 / optimizer.b2 (Adam's decay rates).

Adam is checked against a NumPy Adam written from the paper's update
(Kingma & Ba 2015, Algorithm 1; eps outside the square root, as optax and
PyTorch), in one-state and per-group (`groups`) form.
"""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.train.optim import ADAM_B1, ADAM_B2, make_optimizer


def _cfg(**kw):
  c = ml_collections.ConfigDict(config_lib.to_dict(
      config_lib.base_config().optimizer))
  c.update(kw)
  return c


def numpy_adam(grads, lr, b1, b2, eps=1e-8):
  """The parameter after len(grads) Adam steps from 0, per the paper."""
  p = np.zeros_like(grads[0], dtype=np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return p


def run(opt, grads, params):
  state = opt.init(params)
  for g in grads:
    updates, state = opt.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


GRADS = [np.random.default_rng(s).normal(size=(4,)).astype(np.float32) *
         (10.0 if s == 2 else 1.0) for s in range(5)]


def test_defaults_are_optax_adam():
  base = config_lib.base_config().optimizer
  assert (base.b1, base.b2) == (ADAM_B1, ADAM_B2) == (0.9, 0.999)
  params = {"w": jnp.zeros(4)}
  grads = [{"w": jnp.asarray(g)} for g in GRADS]
  mine = run(make_optimizer(_cfg(), 10), grads, params)
  theirs = run(optax.adam(1e-3), grads, params)
  np.testing.assert_array_equal(mine["w"], theirs["w"])  # bit for bit


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("b1,b2", [(0.9, 0.98), (0.5, 0.9), (0.0, 0.0)])
def test_betas_reach_adam(name, grouped, b1, b2):
  cfg = _cfg(name=name, b1=b1, b2=b2, learning_rate=0.1, weight_decay=0.0)
  params = {"towers": {"t": {"w": jnp.zeros(4)}}, "shared": {"w": jnp.zeros(4)}}
  grads = [{"towers": {"t": {"w": jnp.asarray(g)}},
            "shared": {"w": jnp.asarray(g[::-1])}} for g in GRADS]
  opt = make_optimizer(cfg, 10, groups=("t",) if grouped else None)
  out = run(opt, grads, params)
  np.testing.assert_allclose(out["towers"]["t"]["w"],
                             numpy_adam(GRADS, 0.1, b1, b2), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out["shared"]["w"],
                             numpy_adam([g[::-1] for g in GRADS], 0.1, b1, b2),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_bad_betas_name_the_key(bad):
  with pytest.raises(ValueError, match=r"optimizer.b2 must be in \[0, 1\)"):
    make_optimizer(_cfg(b2=bad), 10)
  with pytest.raises(ValueError, match=r"optimizer.b1 must be in \[0, 1\)"):
    make_optimizer(_cfg(b1=bad), 10, groups=("t",))


def test_other_optimizers_keep_their_own_betas():
  """lion's optax b2 is 0.99: the Adam defaults are not passed to it, and a
  changed b2 is refused rather than silently ignored."""
  params = {"w": jnp.zeros(4)}
  grads = [{"w": jnp.asarray(g)} for g in GRADS]
  mine = run(make_optimizer(_cfg(name="lion"), 10), grads, params)
  theirs = run(optax.lion(1e-3, weight_decay=0.0), grads, params)
  np.testing.assert_array_equal(mine["w"], theirs["w"])
  with pytest.raises(ValueError, match="adam and adamw only"):
    make_optimizer(_cfg(name="lion", b2=0.98), 10)
  with pytest.raises(ValueError, match="adam and adamw only"):
    make_optimizer(_cfg(name="sgd", b1=0.5), 10, groups=("t",))


def test_sasrec_reference_uses_beta2_098():
  from experiments.ml100k_sequence import sasrec_reference_config
  c = sasrec_reference_config()
  assert (c.optimizer.name, c.optimizer.b1, c.optimizer.b2) == (
      "adam", 0.9, 0.98)
