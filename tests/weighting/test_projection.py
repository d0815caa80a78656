"""Projection-type gradient strategies against independent NumPy references.

pcgrad, gradvac, graddrop, imtl_g, aligned_mtl (tests/weighting/
reference_projection.py) and gradnorm's behaviour on a small problem.
Agreement criterion: cosine >= 0.999 and norm within 2% of the reference.
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.weighting import aggregate, apply_strategy, build, gramian
from mtrec_jax.weighting.projection import (graddrop_combine,
                                            graddrop_rep_combine,
                                            uniform_16bit)
try:
  from tests.weighting import reference_projection as ref
except ImportError:  # tests/ not importable as a package: rootdir-less run.
  import reference_projection as ref  # type: ignore[no-redef]

COS_MIN = 0.999
NORM_RTOL = 0.02


@functools.lru_cache(maxsize=None)
def _jitted_aggregate(name: str, hparams: tuple):
  hp = {k: list(v) if isinstance(v, tuple) else v for k, v in hparams}
  return jax.jit(lambda jac, key: aggregate(name, jac, key=key, **hp))


def agg(name: str, jac, key=None, **hparams) -> np.ndarray:
  """`aggregate` under jit (one compilation per name, hparams and shape)."""
  hashable = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                          for k, v in hparams.items()))
  return np.asarray(_jitted_aggregate(name, hashable)(jnp.asarray(jac), key))


def assert_agrees(update, expected, *, what=""):
  update = np.asarray(update, np.float64)
  expected = np.asarray(expected, np.float64)
  n_u, n_e = np.linalg.norm(update), np.linalg.norm(expected)
  if n_e < 1e-9:
    assert n_u < 1e-5, f"{what}: expected ~0, got norm {n_u}"
    return
  cos = float(update @ expected) / (n_u * n_e + 1e-300)
  assert cos >= COS_MIN, f"{what}: cosine {cos:.6f} < {COS_MIN}"
  assert abs(n_u / n_e - 1) <= NORM_RTOL, (
      f"{what}: norm ratio {n_u / n_e:.4f} off by more than {NORM_RTOL:.0%}")


def random_jacobians(shapes, seed=0, conflict=True):
  rng = np.random.default_rng(seed)
  for k, p in shapes:
    j = rng.normal(size=(k, p))
    if conflict:  # Make some strong conflicts: flip part of one row.
      j[-1] = -0.8 * j[0] + 0.3 * j[-1]
    j *= rng.uniform(0.1, 10.0, size=(k, 1))  # Unequal gradient norms.
    yield j.astype(np.float32)


SHAPES = [(2, 3), (3, 40), (5, 8), (6, 60)]


# --------------------------------------------------------------------------
# PCGrad.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("jac", list(random_jacobians(SHAPES)),
                         ids=[f"K{k}P{p}" for k, p in SHAPES])
def test_pcgrad_matches_reference_fixed_order(jac):
  expected = ref.pcgrad(jac)
  assert_agrees(agg("pcgrad", jac, random_order=False), expected,
                what="pcgrad(random_order=False)")
  # A key of None reaching `weigh` also means the fixed order 0..K-1.
  s = build("pcgrad")
  out = s.weigh(s.init(jac.shape[0]), gramian=gramian(jnp.asarray(jac)),
                losses=jnp.ones(jac.shape[0]), step=0, key=None)
  assert_agrees(np.asarray(out.weights) @ jac.astype(np.float64), expected,
                what="pcgrad weigh(key=None)")


def test_pcgrad_random_order_is_one_of_the_orders():
  # Every task conflicts with both others, so all 8 order combinations give
  # different results.
  jac = np.array([[1, 0, 0], [-1, 1, 0], [-1, -0.5, 1]], np.float32)
  k = jac.shape[0]
  candidates = []
  for perms in itertools.product(itertools.permutations(range(k)), repeat=k):
    candidates.append(ref.pcgrad(jac, perms))
  seen = set()
  for seed in range(8):
    update = agg("pcgrad", jac, key=jax.random.PRNGKey(seed))
    dists = [np.linalg.norm(np.asarray(update) - c) for c in candidates]
    best = int(np.argmin(dists))
    assert dists[best] < 1e-4 * (1 + np.linalg.norm(candidates[best]))
    seen.add(tuple(np.round(candidates[best], 4)))
  assert len(seen) > 1  # Different keys give different orders here.
  # Same key, same result.
  np.testing.assert_array_equal(agg("pcgrad", jac, key=jax.random.PRNGKey(1)),
                                agg("pcgrad", jac, key=jax.random.PRNGKey(1)))


def test_aggregate_without_key_uses_fixed_order():
  # Every order combination gives a different result for this matrix.
  jac = np.array([[1, 0, 0], [-1, 1, 0], [-1, -0.5, 1]], np.float32)
  np.testing.assert_allclose(agg("pcgrad", jac), ref.pcgrad(jac), rtol=1e-5)
  np.testing.assert_allclose(aggregate("pcgrad", jac), ref.pcgrad(jac),
                             rtol=1e-5)
  targets = np.zeros((3, 3))
  np.testing.assert_allclose(agg("gradvac", jac),
                             ref.gradvac(jac, targets, 0.5)[0], rtol=1e-5)


def test_pcgrad_orthogonal_rows_sum():
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 4)))
  jac = (q.T * np.array([[0.5], [2.0], [1.0], [3.0]])).astype(np.float32)
  np.testing.assert_allclose(agg("pcgrad", jac), jac.sum(0), atol=1e-5)
  np.testing.assert_allclose(
      agg("pcgrad", jac, key=jax.random.PRNGKey(5)), jac.sum(0),
      atol=1e-5)


def test_pcgrad_two_conflicting_vectors_by_hand():
  # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1.
  # g1' = g1 - (-1 / |g2|^2) g2 = (1, 0) + (-1, 1) / 2 = (0.5, 0.5)
  # g2' = g2 - (-1 / |g1|^2) g1 = (-1, 1) + (1, 0)     = (0, 1)
  jac = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)
  np.testing.assert_allclose(agg("pcgrad", jac, random_order=False),
                             [0.5, 1.5], atol=1e-6)
  # A second case: g1 = (-4, 1, 1), g2 = (6, 1, 1), g1.g2 = -22,
  # |g1|^2 = 18, |g2|^2 = 38: g1' = g1 + 22/38 g2, g2' = g2 + 22/18 g1.
  jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
  g1, g2 = jac.astype(np.float64)
  expected = (g1 + 22 / 38 * g2) + (g2 + 22 / 18 * g1)
  np.testing.assert_allclose(agg("pcgrad", jac, random_order=False),
                             expected, rtol=1e-5)


# --------------------------------------------------------------------------
# GradVac.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ema_on_conflict_only", [False, True])
@pytest.mark.parametrize("k,p", [(3, 30), (5, 12)])
def test_gradvac_matches_reference_over_steps(k, p, ema_on_conflict_only):
  beta = 0.5
  s = build("gradvac", random_order=False, beta=beta,
            ema_on_conflict_only=ema_on_conflict_only)
  weigh = jax.jit(s.weigh)
  state = s.init(k)
  targets = np.zeros((k, k))
  rng = np.random.default_rng(k * 10 + p)
  base = rng.normal(size=(k, p))
  for step in range(4):
    jac = (base + 0.9 * rng.normal(size=(k, p))).astype(np.float32)
    out = weigh(state, gramian=gramian(jnp.asarray(jac)), losses=jnp.ones(k),
                step=step, key=None)
    expected, targets = ref.gradvac(jac, targets, beta,
                                    ema_on_conflict_only=ema_on_conflict_only)
    assert_agrees(np.asarray(out.weights, np.float64) @ jac, expected,
                  what=f"gradvac step {step}")
    np.testing.assert_allclose(np.asarray(out.state["targets"]), targets,
                               atol=2e-4)
    state = out.state


def test_gradvac_first_step_is_pcgrad():
  for jac in random_jacobians([(4, 7)], seed=7):
    assert_agrees(agg("gradvac", jac, random_order=False),
                  ref.pcgrad(jac), what="gradvac step 0 vs pcgrad")


def test_gradvac_raises_cosine_to_target():
  # With a target of 0.5 for the pair (0, 1) and orthogonal gradients, the
  # edited g_0 must have cosine 0.5 with g_1.
  s = build("gradvac", random_order=False)
  jac = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
  state = {"targets": jnp.array([[0.0, 0.5], [0.0, 0.0]])}
  out = s.weigh(state, gramian=gramian(jnp.asarray(jac)), losses=jnp.ones(2),
                step=0, key=None)
  # weights = C[0] + C[1] = (1, w01) + (0, 1): g0' = g0 + (weights[1] - 1) g1.
  g0 = np.asarray(out.weights)[0] * jac[0] + (np.asarray(out.weights)[1]
                                              - 1.0) * jac[1]
  cos = g0 @ jac[1] / (np.linalg.norm(g0) * np.linalg.norm(jac[1]))
  assert abs(cos - 0.5) < 1e-5


# --------------------------------------------------------------------------
# GradDrop.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_combine_matches_reference(leak):
  rng = np.random.default_rng(11)
  jac = rng.normal(size=(4, 50)).astype(np.float32)
  jac[:, :5] = np.abs(jac[:, :5])      # All-positive columns.
  jac[:, 5:10] = -np.abs(jac[:, 5:10])  # All-negative columns.
  jac[:, 10] = 0.0                     # An all-zero column.
  noise = rng.uniform(size=50).astype(np.float32)
  update, kept = graddrop_combine(jnp.asarray(jac), jnp.asarray(noise), leak)
  expected = ref.graddrop(jac, noise, leak)
  assert_agrees(update, expected, what="graddrop")
  np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-5)
  # Kept fraction of each task's squared norm, by brute force.
  total, mass = jac.sum(0), np.abs(jac).sum(0)
  purity = np.where(mass > 0, 0.5 * (1 + total / np.where(mass > 0, mass, 1)),
                    0.5)
  keep = ((purity > noise) & (jac > 0)) | ((purity < noise) & (jac < 0))
  mult = leak + (1 - leak) * keep
  np.testing.assert_allclose(kept, (mult * jac**2).sum(1) / (jac**2).sum(1),
                             rtol=1e-5)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_rep_combine_matches_reference(leak):
  rng = np.random.default_rng(12)
  k, b, f = 3, 6, 20
  grads = rng.normal(size=(k, b, f)).astype(np.float32)
  rep = rng.normal(size=(k, b, f)).astype(np.float32)
  rep[:, :, 0] = np.abs(rep[:, :, 0])            # Positive activations.
  grads[:, :, 0] = np.abs(grads[:, :, 0])        # -> every task agrees.
  rep[:, 2, 1] = 0.0                              # A dead unit in one example.
  grads[:, :, 2] = 0.0                            # A feature with no gradient.
  noise = rng.uniform(size=f).astype(np.float32)
  cot, kept = graddrop_rep_combine(jnp.asarray(grads), jnp.asarray(rep),
                                   jnp.asarray(noise), leak)
  expected = ref.graddrop_rep(grads, rep, noise, leak)
  np.testing.assert_allclose(cot, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cot[:, :, 0], grads[:, :, 0], rtol=1e-6)
  mult = np.where(grads != 0, expected / np.where(grads != 0, grads, 1), 1.0)
  np.testing.assert_allclose(
      kept, (mult * grads ** 2).sum((1, 2)) / (grads ** 2).sum((1, 2)),
      rtol=1e-5)
  # One decision per task and feature, shared by the whole batch.
  assert np.all((mult == mult[:, :1, :]) | (grads == 0))


def test_graddrop_rep_mode_uses_the_batch_reduced_purity():
  """The train step hands GradDrop the [K, B, H] structure in rep mode: the
  shared update equals the VJP of the reference's per-slot cotangents."""
  s = build("graddrop", report_every=1)
  rng = np.random.default_rng(5)
  k, b, h = 2, 8, 5
  grads = jnp.asarray(rng.normal(size=(k, b, h)).astype(np.float32))
  rep = jnp.asarray(rng.normal(size=(k, b, h)).astype(np.float32))
  key = jax.random.PRNGKey(9)
  cot, out = jax.jit(lambda: s.aggregate_rep(
      s.init(k), rep_grads=grads, rep=rep, losses=jnp.ones(k), step=0,
      key=key))()
  noise = np.asarray(uniform_16bit(key, h))
  np.testing.assert_allclose(cot, ref.graddrop_rep(grads, rep, noise),
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(out.weights)) and out.weights.shape == (k,)


def test_uniform_16bit_is_uniform_on_the_open_interval():
  u = np.asarray(uniform_16bit(jax.random.PRNGKey(3), 200_001))
  assert u.shape == (200_001,) and u.min() > 0 and u.max() < 1
  # Moments of U(0, 1): mean 1/2 (se 0.00065), P(U < 0.3) = 0.3 (se 0.001).
  assert abs(u.mean() - 0.5) < 0.003 and abs((u < 0.3).mean() - 0.3) < 0.005
  # 16-bit resolution: every value is (b + 1/2) / 2^16 for an integer b.
  b = u * 65536 - 0.5
  np.testing.assert_allclose(b, np.round(b), atol=1e-3)
  assert len(np.unique(np.round(b))) > 60_000  # Both halves of each draw used.


def test_graddrop_identical_signs_keep_everything():
  rng = np.random.default_rng(2)
  mag = np.abs(rng.normal(size=(3, 40))).astype(np.float32)
  signs = np.where(rng.uniform(size=40) < 0.5, -1.0, 1.0).astype(np.float32)
  jac = mag * signs[None, :]  # Per column, every task has the same sign.
  s = build("graddrop")
  run = jax.jit(lambda key: apply_strategy(
      s, s.init(3), losses=jnp.ones(3), stacked_grads=jnp.asarray(jac),
      key=key))
  for seed in range(5):
    update, out = run(jax.random.PRNGKey(seed))
    np.testing.assert_allclose(update, jac.sum(0), rtol=1e-6)
    np.testing.assert_allclose(out.weights, np.ones(3), rtol=1e-6)


def test_graddrop_reports_kept_fractions_every_n_steps():
  rng = np.random.default_rng(4)
  jac = jnp.asarray(rng.normal(size=(3, 64)).astype(np.float32))
  s = build("graddrop", report_every=5)
  agg = jax.jit(lambda state, step, key: s.aggregate(
      state, jacobian=jac, losses=jnp.ones(3), step=step, key=key)[1])
  state = s.init(3)
  for step in range(7):
    key = jax.random.PRNGKey(step)
    out = agg(state, step, key)
    noise = uniform_16bit(key, 64)
    _, exact = graddrop_combine(jac, noise)
    # Exact at multiples of report_every, held (state) in between.
    expected = exact if step % 5 == 0 else state
    np.testing.assert_allclose(out.weights, expected, rtol=1e-6)
    state = out.state
  with pytest.raises(ValueError, match="report_every"):
    build("graddrop", report_every=0)


def test_graddrop_expectation():
  # E[update] per coordinate = P * sum(pos) + (1 - P) * sum(neg).
  jac = np.array([[1.0, -2.0, 0.5], [-3.0, 1.0, 0.5], [0.5, -1.0, -2.0]],
                 np.float32)
  s = build("graddrop")
  keys = jax.random.split(jax.random.PRNGKey(0), 3000)
  run = jax.jit(jax.vmap(lambda key: s.aggregate(
      s.init(3), jacobian=jnp.asarray(jac), losses=jnp.ones(3), step=0,
      key=key)[0]))
  mean = np.asarray(run(keys)).mean(0)
  pos = np.where(jac > 0, jac, 0).sum(0)
  neg = np.where(jac < 0, jac, 0).sum(0)
  purity = 0.5 * (1 + jac.sum(0) / np.abs(jac).sum(0))
  np.testing.assert_allclose(mean, purity * pos + (1 - purity) * neg,
                             atol=0.12)
  # Leak 1 is the plain sum.
  np.testing.assert_allclose(agg("graddrop", jac, leak=1.0),
                             jac.sum(0), rtol=1e-6)


# --------------------------------------------------------------------------
# IMTL-G.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("jac", list(random_jacobians(SHAPES, seed=5)),
                         ids=[f"K{k}P{p}" for k, p in SHAPES])
def test_imtl_g_matches_paper_formula(jac):
  update = agg("imtl_g", jac)
  assert_agrees(update, ref.imtl_g(jac), what="imtl_g")
  # Defining property: equal projections onto every unit task gradient.
  units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
  proj = units.astype(np.float64) @ np.asarray(update, np.float64)
  np.testing.assert_allclose(proj, proj.mean(), rtol=2e-3,
                             atol=1e-4 * np.abs(proj).max())


def test_imtl_g_hand_example_and_degenerate():
  # g1 = (-4, 1, 1), g2 = (6, 1, 1): the combination with equal projections
  # on u1 and u2 and weights summing to 1.
  jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
  assert_agrees(agg("imtl_g", jac), ref.imtl_g(jac), what="imtl_g 2x3")
  s = build("imtl_g")
  w = s.weigh((), gramian=gramian(jnp.asarray(jac)), losses=jnp.ones(2),
              step=0, key=None).weights
  np.testing.assert_allclose(float(jnp.sum(w)), 1.0, rtol=1e-6)
  # One task, identical rows and zero rows give finite answers.
  np.testing.assert_allclose(agg("imtl_g", jac[:1]), jac[0], rtol=1e-6)
  same = np.stack([jac[0], jac[0]])
  np.testing.assert_allclose(agg("imtl_g", same), jac[0], rtol=1e-4)
  assert np.all(np.isfinite(agg("imtl_g", np.zeros((3, 4),
                                                         np.float32))))


# --------------------------------------------------------------------------
# Aligned-MTL.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("jac", list(random_jacobians(SHAPES, seed=9)),
                         ids=[f"K{k}P{p}" for k, p in SHAPES])
def test_aligned_mtl_matches_svd_reference(jac):
  assert_agrees(agg("aligned_mtl", jac), ref.aligned_mtl(jac),
                what="aligned_mtl")
  k = jac.shape[0]
  pref = np.full(k, 1.0 / k)
  assert_agrees(agg("aligned_mtl", jac, pref_vector=list(pref)),
                ref.aligned_mtl(jac, pref), what="aligned_mtl pref 1/K")


@pytest.mark.parametrize("scale_mode", ["median", "rmse"])
@pytest.mark.parametrize("k", [3, 4])
def test_aligned_mtl_scale_modes(scale_mode, k):
  jac = next(random_jacobians([(k, 30)], seed=k))
  assert_agrees(agg("aligned_mtl", jac, scale_mode=scale_mode),
                ref.aligned_mtl(jac, scale_mode=scale_mode),
                what=f"aligned_mtl {scale_mode}")


@pytest.mark.parametrize("k,p", [(4, 2), (5, 3), (3, 1)])
def test_aligned_mtl_rank_deficient(k, p):
  rng = np.random.default_rng(k + p)
  jac = rng.normal(size=(k, p)).astype(np.float32)
  update = agg("aligned_mtl", jac)
  assert np.all(np.isfinite(np.asarray(update)))
  assert_agrees(update, ref.aligned_mtl(jac), what="aligned_mtl low rank")


def test_aligned_mtl_orthogonal_equal_norms_is_sum():
  q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(9, 3)))
  jac = (2.0 * q.T).astype(np.float32)
  np.testing.assert_allclose(agg("aligned_mtl", jac), jac.sum(0),
                             atol=1e-5)
  assert np.all(agg("aligned_mtl", np.zeros((2, 3), np.float32)) == 0)


# --------------------------------------------------------------------------
# GradNorm.
# --------------------------------------------------------------------------


def _run_gradnorm(norms, losses_fn, steps, **hparams):
  s = build("gradnorm", **hparams)
  k = len(norms)
  gram = jnp.diag(jnp.asarray(norms, jnp.float32) ** 2)

  def body(state, t):
    out = s.weigh(state, gramian=gram, losses=losses_fn(t), step=t, key=None)
    return out.state, (out.weights, out.state["weights"])

  state, (applied, updated) = jax.lax.scan(jax.jit(body), s.init(k),
                                           jnp.arange(steps))
  return state, np.asarray(applied), np.asarray(updated)


def test_gradnorm_balances_gradient_norms_and_sums_to_k():
  norms = np.array([1.0, 4.0])
  state, applied, updated = _run_gradnorm(
      norms, lambda t: jnp.array([1.0, 1.0]), 400)
  np.testing.assert_allclose(applied.sum(1), 2.0, rtol=1e-5)
  np.testing.assert_allclose(updated.sum(1), 2.0, rtol=1e-5)
  # Equal training rates: w_k ||g_k|| equalise -> w = (1.6, 0.4).
  gap0 = abs(norms[0] - norms[1])
  w = updated[-50:].mean(0)
  gap = abs(w[0] * norms[0] - w[1] * norms[1])
  assert gap < 0.1 * gap0
  np.testing.assert_allclose(w, [1.6, 0.4], atol=0.05)


def test_gradnorm_favours_the_slower_task():
  # Equal gradient norms; task 1 trains slower (its loss stays at L(0)), so
  # its target r^alpha is larger and its weight must grow.
  norms = np.array([1.0, 1.0, 1.0])

  def losses(t):
    decay = jnp.exp(-0.01 * t.astype(jnp.float32))
    return jnp.array([1.0, 1.0, 1.0]) * jnp.array([decay, 1.0, decay])

  _, applied, updated = _run_gradnorm(norms, losses, 300, alpha=1.5)
  np.testing.assert_allclose(updated.sum(1), 3.0, rtol=1e-5)
  assert updated[-1, 1] > 1.5 and updated[-1, 0] < 1.0
  np.testing.assert_allclose(updated[-1, 0], updated[-1, 2], rtol=1e-4)
  # The first applied weights are the initial ones.
  np.testing.assert_allclose(applied[0], np.ones(3))
