"""`catalogue_softmax_loss` against the plain [N, V] formula and NumPy.

References: (1) a float64 NumPy brute force written another way
(scipy's logsumexp over every row, the gradient as the closed form
(softmax - onehot) weighted, by hand); (2) the plain JAX formula the
`next_all` task used before (optax's integer-label cross-entropy of the
full logits with column 0 set to -1e9), value and `jax.grad`.  Inputs:
random rows, all-padding rows (weight 0 everywhere), a single row, rows
scaled by 0.1/1/10, identical rows, one row x100, an all-zero x, a chunk
size that does not divide N, and a target 0 at a weighted row.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

from mtrec_jax.population_axis import POPULATION_AXIS
from mtrec_jax.tasks.catalogue_softmax import (PADDING_LOGIT,
                                               catalogue_softmax_loss,
                                               chunk_rows_for)

V, E, N = 37, 6, 24


def numpy_reference(x, table, targets, weights, bias, exclude_padding=True):
  """(loss, dx, dtable, dbias, dweights) in float64, by the closed form."""
  x, table = np.float64(x), np.float64(table)
  bias = np.zeros(table.shape[0]) if bias is None else np.float64(bias)
  z = x @ table.T + bias
  if exclude_padding:
    z[:, 0] = PADDING_LOGIT
  lse = logsumexp(z, axis=1)
  ce = lse - z[np.arange(len(x)), targets]
  p = np.exp(z - lse[:, None])
  g = p.copy()
  g[np.arange(len(x)), targets] -= 1.0
  if exclude_padding:
    g[:, 0] = 0.0  # a constant logit
  g *= np.float64(weights)[:, None]
  return (float(np.sum(ce * weights)), g @ table, g.T @ x, g.sum(0), ce)


def plain(x, table, targets, weights, bias):
  """The old next_all formula: full logits, column 0 set, optax's CE."""
  z = (x @ table.T + bias).at[:, 0].set(PADDING_LOGIT)
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(z, targets)
                 * weights)


def fused(x, table, targets, weights, bias, **kw):
  return catalogue_softmax_loss(x, table, targets, weights, bias, **kw)


@functools.partial(jax.jit, static_argnames="chunk")
def fused_and_grads(x, table, targets, weights, bias, chunk):
  f = lambda *a: fused(*a, chunk_rows=chunk)
  return f(x, table, targets, weights, bias), jax.grad(
      f, argnums=(0, 1, 3, 4))(x, table, targets, weights, bias)


@jax.jit
def plain_and_grads(x, table, targets, weights, bias):
  return jax.value_and_grad(plain, argnums=(0, 1, 4))(
      x, table, targets, weights, bias)


def make(n, seed=0, scale=1.0, live=0.7):
  r = np.random.default_rng(seed)
  x = (r.normal(size=(n, E)) * scale).astype(np.float32)
  table = (r.normal(size=(V, E)) * 0.5).astype(np.float32)
  bias = (r.normal(size=V) * 0.1).astype(np.float32)
  targets = r.integers(1, V, size=n).astype(np.int32)
  weights = (r.random(n) < live).astype(np.float32)
  targets[weights == 0] = 0  # padding positions have target 0
  return x, table, targets, weights, bias


def cases():
  """Every case has N rows (one compilation per chunk size) but one_row."""
  out = {"random": make(N), "one_row": make(1, live=1.0),
         "all_padding": make(N, live=0.0)}
  for s in (0.1, 1.0, 10.0):
    out[f"scaled_{s}"] = make(N, seed=2, scale=s)
  x, t, y, w, b = make(N, seed=3, live=1.0)
  out["identical_rows"] = (np.repeat(x[:1], N, 0), t, y, w, b)
  x2 = x.copy()
  x2[4] *= 100
  out["one_row_x100"] = (x2, t, y, w, b)
  out["all_zero"] = (np.zeros_like(x), t, y, w, b)
  return out


CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("chunk", [None, 7])
def test_value_and_gradient_match_numpy_and_the_plain_formula(name, chunk):
  x, table, targets, weights, bias = CASES[name]
  args = tuple(jnp.asarray(a) for a in (x, table, targets, weights, bias))
  ref = numpy_reference(x, table, targets, weights, bias)
  value, (gx, gtab, gw, gb) = fused_and_grads(*args, chunk)
  scale = max(1.0, abs(ref[0]))
  np.testing.assert_allclose(value, ref[0], rtol=2e-6, atol=1e-5 * scale)
  tol = dict(rtol=2e-4, atol=1e-5 * max(1.0, np.abs(x).max()))
  np.testing.assert_allclose(gx, ref[1], **tol)
  np.testing.assert_allclose(gtab, ref[2], **tol)
  np.testing.assert_allclose(gb, ref[3], **tol)
  assert not np.any(np.asarray(gw))  # weights are constants
  # The plain [N, V] formula, value and gradient.
  pv, pg = plain_and_grads(*args)
  np.testing.assert_allclose(value, pv, rtol=2e-6, atol=1e-5 * scale)
  for mine, theirs in zip((gx, gtab, gb), pg):
    np.testing.assert_allclose(mine, theirs, **tol)


def test_all_padding_gives_zero_loss_and_zero_gradient():
  value, grads = fused_and_grads(*CASES["all_padding"], None)
  assert float(value) == 0.0
  for g in grads:
    assert not np.any(np.asarray(g))


def test_float64_agrees_to_1e12():
  with jax.enable_x64(True):
    x, table, targets, weights, bias = (np.float64(a) if a.dtype.kind == "f"
                                        else a for a in make(40, seed=5))
    ref = numpy_reference(x, table, targets, weights, bias)
    value, (gx, gtab) = jax.value_and_grad(fused, argnums=(0, 1))(
        x, table, targets, weights, bias, chunk_rows=9)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, ref[0], rtol=1e-12)
    np.testing.assert_allclose(gx, ref[1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(gtab, ref[2], rtol=1e-10, atol=1e-13)


def test_forward_mode_and_vmap_match_reverse_mode():
  """jvp (Auto-Lambda's forward mode) and vmap over cotangents (the
  'vmap' Jacobian engine) give what jax.grad gives."""
  x, table, targets, weights, bias = (jnp.asarray(a) for a in make(25))
  r = np.random.default_rng(9)
  tx = jnp.asarray(r.normal(size=x.shape), jnp.float32)
  tt = jnp.asarray(r.normal(size=table.shape), jnp.float32)
  f = lambda x, t: fused(x, t, targets, weights, bias, chunk_rows=4)
  _, tangent = jax.jvp(f, (x, table), (tx, tt))
  gx, gt = jax.grad(f, argnums=(0, 1))(x, table)
  np.testing.assert_allclose(tangent, jnp.vdot(gx, tx) + jnp.vdot(gt, tt),
                             rtol=1e-5)
  _, vjp = jax.vjp(f, x, table)
  batched = jax.vmap(vjp)(jnp.asarray([1.0, -2.0, 0.5]))
  for k, c in enumerate((1.0, -2.0, 0.5)):
    np.testing.assert_allclose(batched[0][k], c * gx, rtol=1e-5, atol=1e-7)


def test_population_vmap_keeps_the_chunk_skip_and_each_members_numbers():
  """Inside the population's vmap a chunk is skipped only when no member
  has a weighted row in it: still a `cond`, and each member's loss and
  gradients equal its solo ones, for members with many, few and no
  weighted rows (the padding rows a member computes only because another
  needs the chunk add exactly 0)."""
  members = [make(N, seed=20 + m, live=live)
             for m, live in enumerate((0.9, 0.2, 0.0))]
  x, table, targets, weights, bias = (
      jnp.asarray(np.stack(a)) for a in zip(*members))

  def value_and_grads(x, table, targets, weights, bias):
    f = lambda x, t, b: fused(x, t, targets, weights, b, chunk_rows=4)
    return jax.value_and_grad(f, argnums=(0, 1, 2))(x, table, bias)

  population = jax.vmap(value_and_grads, axis_name=POPULATION_AXIS)
  args = (x, table, targets, weights, bias)
  assert "cond[" in str(jax.make_jaxpr(population)(*args))
  # An unnamed vmap batches the predicate: every chunk, selected after.
  assert "cond[" not in str(jax.make_jaxpr(jax.vmap(value_and_grads))(*args))
  got = jax.jit(population)(*args)
  for m in range(len(members)):
    want = jax.jit(value_and_grads)(*(a[m] for a in args))
    for g, w in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(g[m], w, rtol=1e-6, atol=1e-7)


def test_second_derivative_matches_the_plain_formula():
  """Higher derivatives go through the chunked gradient's own rules."""
  x, table, targets, weights, bias = (jnp.asarray(a) for a in make(8))
  v = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
  hvp = lambda f: jax.jvp(jax.grad(f), (x,), (v,))[1]
  mine = hvp(lambda x: fused(x, table, targets, weights, bias, chunk_rows=3))
  theirs = hvp(lambda x: plain(x, table, targets, weights, bias))
  np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)


def test_keeps_padding_out_and_can_score_it():
  x, table, targets, weights, bias = make(10, live=1.0)
  targets = targets.copy()
  targets[3] = 0  # a weighted row whose target is the padding id
  kept = fused(x, table, targets, weights, bias, exclude_padding=False)
  ref = numpy_reference(x, table, targets, weights, bias,
                        exclude_padding=False)
  np.testing.assert_allclose(kept, ref[0], rtol=2e-6)
  excluded = fused(x, table, targets, weights, bias)
  assert float(excluded) > 1e8  # -log of a probability of exactly 0


def test_bad_inputs_name_the_problem():
  x, table, targets, weights, bias = make(5)
  with pytest.raises(ValueError, match="same E"):
    fused(x[:, :3], table, targets, weights, bias)
  with pytest.raises(ValueError, match="targets and weights must be"):
    fused(x, table, targets[:4], weights, bias)
  with pytest.raises(ValueError, match="integer item ids"):
    fused(x, table, targets.astype(np.float32), weights, bias)
  with pytest.raises(ValueError, match="bias must be"):
    fused(x, table, targets, weights, bias[:3])
  with pytest.raises(ValueError, match="chunk_rows"):
    fused(x, table, targets, weights, bias, chunk_rows=-1)


def test_chunk_rows_for():
  assert chunk_rows_for(1683) == (1 << 19) // 1683
  assert chunk_rows_for(10 ** 9) == 1


def numpy_reference_excluding(x, table, targets, weights, bias, excluded):
  """`numpy_reference` with the `excluded` columns given the padding logit
  too (a constant: no gradient through them)."""
  x, table = np.float64(x), np.float64(table)
  z = x @ table.T + np.float64(bias)
  z[:, [0, *excluded]] = PADDING_LOGIT
  lse = logsumexp(z, axis=1)
  ce = lse - z[np.arange(len(x)), targets]
  g = np.exp(z - lse[:, None])
  g[np.arange(len(x)), targets] -= 1.0
  g[:, [0, *excluded]] = 0.0
  g *= np.float64(weights)[:, None]
  return float(np.sum(ce * weights)), g @ table, g.T @ x, g.sum(0)


@pytest.mark.parametrize("chunk", [None, 7])
def test_excluded_items_are_never_scored_nor_trained(chunk):
  """A cold-start split's held-out items: value and gradient as if their
  columns were padding; their table rows and biases get exactly 0."""
  x, table, targets, weights, bias = make(N, seed=4)
  excluded = (3, 11, V - 1)
  targets = np.where(np.isin(targets, excluded), 5, targets).astype(np.int32)
  ref = numpy_reference_excluding(x, table, targets, weights, bias, excluded)
  f = lambda x, t, b: fused(x, t, targets, weights, b, chunk_rows=chunk,
                            excluded_items=excluded)
  value, (gx, gtab, gb) = jax.value_and_grad(f, argnums=(0, 1, 2))(
      x, table, bias)
  np.testing.assert_allclose(value, ref[0], rtol=2e-6)
  tol = dict(rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(gx, ref[1], **tol)
  np.testing.assert_allclose(gtab, ref[2], **tol)
  np.testing.assert_allclose(gb, ref[3], **tol)
  for item in (0, *excluded):
    assert not np.any(np.asarray(gtab[item])) and float(gb[item]) == 0.0
  # Left in, they are every row's negatives: a different loss and gradient.
  assert not np.allclose(value, fused(x, table, targets, weights, bias))


def test_no_excluded_items_is_the_program_without_them():
  """excluded_items=() (every run without a cold-start split) gives
  bit-identical values and gradients to the call without the argument."""
  x, table, targets, weights, bias = (jnp.asarray(a) for a in make(N))
  g = lambda **kw: jax.jit(jax.value_and_grad(
      lambda x, t: fused(x, t, targets, weights, bias, **kw),
      argnums=(0, 1)))(x, table)
  plain_out, empty_out = g(), g(excluded_items=())
  for a, b in zip(jax.tree_util.tree_leaves(plain_out),
                  jax.tree_util.tree_leaves(empty_out)):
    np.testing.assert_array_equal(a, b)


def test_excluded_items_are_checked():
  x, table, targets, weights, bias = make(5)
  with pytest.raises(ValueError, match=r"excluded_items must be item ids in "
                                       r"\[0, 37\)"):
    fused(x, table, targets, weights, bias, excluded_items=(2, V))
  excluded = fused(x, table, np.full(5, 2, np.int32), np.ones(5, np.float32),
                   bias, excluded_items=(2,))
  assert float(excluded) > 1e8  # a target among them: probability 0


def test_empty_batch_gives_zero_loss_and_zero_gradient():
  x, table, targets, weights, bias = make(0)
  value, grads = jax.value_and_grad(
      lambda x, t, b: fused(x, t, targets, weights, b), argnums=(0, 1, 2))(
          x, table, bias)
  assert float(value) == 0.0 and grads[0].shape == (0, E)
  assert not np.any(np.asarray(grads[1])) and not np.any(np.asarray(grads[2]))


@pytest.mark.parametrize("bias_scale", [1e-3, 30.0, 300.0])
def test_extreme_biases_fold_into_the_matmul_exactly(bias_scale):
  """The bias rides in the logits' matmul (a ones column): tiny and huge
  biases still give the closed form's value and gradient."""
  x, table, targets, weights, bias = make(N, seed=6)
  bias = (bias * bias_scale).astype(np.float32)
  ref = numpy_reference(x, table, targets, weights, bias)
  value, (gx, gtab, gb) = jax.value_and_grad(
      lambda x, t, b: fused(x, t, targets, weights, b, chunk_rows=7),
      argnums=(0, 1, 2))(x, table, bias)
  np.testing.assert_allclose(value, ref[0], rtol=2e-6,
                             atol=1e-5 * max(1.0, abs(ref[0])))
  for mine, theirs in zip((gx, gtab, gb), ref[1:4]):
    np.testing.assert_allclose(mine, theirs, rtol=2e-4, atol=1e-5)
