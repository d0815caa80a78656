"""One registry mechanism for every extension point: flags, lazy loading,
metrics, optimizers by optax's own names."""
from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mtrec_jax.registry import Registry, UnknownNameError
from mtrec_jax.tasks import metrics as metrics_lib
from mtrec_jax.train import optim


def test_flags_are_read_back_and_filter_names():
  r = Registry("widget")
  r.register("a", fast=True)(1)
  r.register("b")(2)
  r.register("c", fast=False)(3)
  assert r.names() == ["a", "b", "c"] and list(r) == ["a", "b", "c"]
  assert r.names(fast=True) == ["a"]
  r.register("0_last")(4)
  assert r.names(sort=False) == ["a", "b", "c", "0_last"]
  assert list(r) == ["a", "b", "c", "0_last"]
  assert r.names()[0] == "0_last"
  assert r.info("a") == {"fast": True} and r.info("b") == {}
  assert r["b"] == 2 and len(r) == 4 and "c" in r
  with pytest.raises(UnknownNameError, match="Did you mean 'a'"):
    r.info("aa")
  with pytest.raises(ValueError, match="registered twice"):
    r.register("a")(9)
  with pytest.raises(ValueError, match="lowercase"):
    r.register("A")


def test_a_registry_imports_its_package_on_first_lookup():
  """The model registry fills itself; importing the registry alone (as the
  config code does) loads no model code and no flax."""
  code = ("import sys; from mtrec_jax.registry import MODELS; "
          "print('flax' in sys.modules, end=' '); "
          "print('mmoe' in MODELS.names(), 'flax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.split() == ["False", "True", "True"], out.stderr


def test_metrics_carry_direction_heads_and_context_as_flags():
  assert metrics_lib.METRICS.info("auc") == {
      "direction": "max", "heads": ("binary", "multilabel"), "context": False}
  assert metrics_lib.direction("logloss") == "min"
  assert metrics_lib.METRICS.info("ndcg@10")["context"]
  assert "ndcg@10" in metrics_lib.CONTEXT_METRICS
  assert "auc" not in metrics_lib.CONTEXT_METRICS
  assert metrics_lib.DIRECTIONS["mse"] == "min"
  # In registration order, as tables list a head's metrics.
  assert list(metrics_lib.DIRECTIONS) == metrics_lib.METRICS.names(sort=False)
  assert metrics_lib.metrics_for_head("regression") == ["mse", "rmse", "mae"]
  assert "mse" in metrics_lib.metrics_for_head("regression")
  with pytest.raises(UnknownNameError, match="'auc'"):
    metrics_lib.get_metric("acu")
  with pytest.raises(ValueError, match="unknown heads"):
    metrics_lib.register_metric("x_test", "max", ("ranking",))


def _opt_cfg(name, **kw):
  base = dict(name=name, learning_rate=0.1, schedule="constant",
              warmup_steps=0, weight_decay=0.0, momentum=0.9,
              grad_clip_norm=0.0)
  return ml_collections.ConfigDict({**base, **kw})


def _updates(opt, steps=3):
  """Updates of `opt` over a few fixed gradients of a small pytree."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  state = opt.init(params)
  out = []
  for _ in range(steps):
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    upd, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, upd)
    out.append(upd)
  return out


@pytest.mark.parametrize("cfg,reference", [
    (_opt_cfg("adam"), optax.adam(0.1)),
    (_opt_cfg("adamw", weight_decay=0.01), optax.adamw(0.1, weight_decay=0.01)),
    (_opt_cfg("sgd"), optax.sgd(0.1, momentum=0.9)),
    (_opt_cfg("sgd", momentum=0.0), optax.sgd(0.1)),
    (_opt_cfg("lion", weight_decay=0.01), optax.lion(0.1, weight_decay=0.01)),
    (_opt_cfg("rmsprop", momentum=0.0), optax.rmsprop(0.1)),
])
def test_optimizers_by_optax_name_match_optax(cfg, reference):
  got = _updates(optim.make_optimizer(cfg, 10))
  want = _updates(reference)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_array_equal(g[k], w[k])


def test_unknown_optimizer_names_the_closest():
  assert {"adam", "adamw", "sgd", "lion", "adafactor"} <= set(
      optim.OPTIMIZERS.names())
  with pytest.raises(UnknownNameError, match="'adam'"):
    optim.make_optimizer(_opt_cfg("adma"), 10)
