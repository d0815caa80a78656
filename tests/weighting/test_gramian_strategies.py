"""MGDA, UPGrad, DualProj, CAGrad and Nash-MTL against independent references.

`mtrec_jax.weighting.aggregate(name, J)` is compared with the NumPy/SciPy
references of `reference.py` on random Jacobians with K in {2, 5} tasks and
P in {4, 50} parameters, in float64 and float32 (K = 3 is compared in
`test_harness.py::test_properties`, which compiles that shape anyway), and
checked against golden values, closed forms and the methods' optimality
conditions.

Compile cost: each (strategy, hyper-parameters, dtype, K) is compiled once,
as `jax.vmap` over a batch of Jacobians of the fixed shape [K, 50]; a
Jacobian with P = 4 is stored in the first 4 columns (the other columns are
zero, which changes neither the Gramian nor the update of these strategies,
and the test checks that the padding stays zero).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtrec_jax.weighting as W
from mtrec_jax.registry import STRATEGIES

try:
  from tests.weighting import reference as ref
except ImportError:  # tests/ not importable as a package.
  import reference as ref  # type: ignore[no-redef]

NAMES = ("mgda", "upgrad", "dualproj", "cagrad", "nash_mtl")
PAD = 50
KS = (2, 5)  # K = 3: see test_harness.py



@functools.lru_cache(maxsize=None)
def _batched(name: str, hparams: tuple, shape: tuple, dtype_name: str):
  """`aggregate` vmapped over a batch, compiled once per key: jitted ahead of
  time at XLA backend optimisation level 0, which compiles ~40% faster."""
  kwargs = dict(hparams)
  fn = jax.jit(jax.vmap(lambda j: W.aggregate(name, j, **kwargs)))
  example = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype_name))
  return fn.lower(example).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def aggregate(name: str, jacs, dtype, **hparams) -> list[np.ndarray]:
  """Runs `aggregate` on a batch of [K, P <= PAD] Jacobians (zero-padded to
  [K, PAD]; P may differ between them) and returns the [P] updates."""
  jacs = [np.asarray(j, np.float64) for j in jacs]
  padded = np.zeros((len(jacs), jacs[0].shape[0], PAD))
  for i, j in enumerate(jacs):
    padded[i, :, :j.shape[1]] = j
  fn = _batched(name, tuple(sorted(hparams.items())), padded.shape,
                jnp.dtype(dtype).name)
  out = np.asarray(fn(jnp.asarray(padded, dtype)), np.float64)
  assert out.shape == padded.shape[::2]
  for o, j in zip(out, jacs):
    np.testing.assert_array_equal(o[j.shape[1]:], 0.0)
  return [o[:j.shape[1]] for o, j in zip(out, jacs)]


def _random_jacobians(k: int, seed: int) -> list[np.ndarray]:
  """Three Jacobians: P = 4, P = 50, and P = 50 with row norms spread over
  two orders of magnitude."""
  rng = np.random.default_rng(seed)
  spread = rng.normal(size=(k, PAD)) * np.exp(rng.normal(size=(k, 1)))
  return [rng.normal(size=(k, 4)), rng.normal(size=(k, PAD)), spread]


def _agreement(out: np.ndarray, want: np.ndarray) -> tuple[float, float]:
  """(1 - cosine, relative norm error)."""
  no, nw = np.linalg.norm(out), np.linalg.norm(want)
  return 1.0 - out @ want / (no * nw), abs(no - nw) / nw


def test_strategies_are_registered():
  for name in NAMES:
    assert name in STRATEGIES
    assert W.build(name).kind == "gramian"


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name, dtype):
  worst_cos, worst_norm = 0.0, 0.0
  for k in KS:
    jacs = _random_jacobians(k, seed=100 * k)
    for jac, out in zip(jacs, aggregate(name, jacs, dtype)):
      want = ref.REFERENCES[name](jac)
      cos_deficit, norm_err = _agreement(out, want)
      worst_cos = max(worst_cos, cos_deficit)
      worst_norm = max(worst_norm, norm_err)
  # Measured (both dtypes): cosine deficits < 1e-6, norm errors < 1e-4.
  assert worst_cos <= 1e-3, (name, worst_cos)
  assert worst_norm <= 0.02, (name, worst_norm)


# Golden values of torchjd's documentation examples (4 decimals), for
# J = [[-4, 1, 1], [6, 1, 1]].
GOLDEN = {
    ("upgrad", ()): [0.2929, 1.9004, 1.9004],
    ("dualproj", ()): [0.5563, 1.1109, 1.1109],
    ("mgda", ()): [0.0, 1.0, 1.0],
    ("cagrad", (("c", 0.5), ("rescale", 0))): [0.1835, 1.2041, 1.2041],
    ("nash_mtl", ()): [0.0542, 0.7061, 0.7061],
}


@pytest.mark.parametrize("name,hparams", list(GOLDEN))
def test_golden_values(name, hparams):
  jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  # Batched with two random Jacobians to share the K = 2 compilation.
  jacs = [jac] + _random_jacobians(2, seed=200)[1:]
  out = aggregate(name, jacs, jnp.float32, **dict(hparams))[0]
  np.testing.assert_allclose(out, GOLDEN[(name, hparams)], atol=2e-4)


def test_mgda_kkt_conditions(dtype):
  """Weights on the simplex; g . g_k = ||g||^2 on the support, >= off it.

  The weights are recovered from the update by least squares (the rows are
  linearly independent for P = 50 > K)."""
  rng = np.random.default_rng(1)
  k = 5
  jacs = [rng.normal(size=(k, PAD)), rng.normal(size=(k, PAD)),
          rng.normal(size=(k, PAD)) + 0.5]
  tol = 1e-5 if dtype == jnp.float32 else 1e-9
  for jac, g in zip(jacs, aggregate("mgda", jacs, dtype)):
    scale = np.sum(jac * jac)
    w = np.linalg.lstsq(jac.T, g, rcond=None)[0]
    assert np.all(w >= -tol * 10)
    np.testing.assert_allclose(w.sum(), 1.0, atol=tol * 10)
    dots = jac @ g
    assert np.all(dots >= g @ g - tol * scale)
    np.testing.assert_allclose(dots[w > 1e-3], g @ g, atol=tol * scale)


def test_mgda_two_tasks_closed_form(dtype):
  rng = np.random.default_rng(2)
  jacs = [rng.normal(size=(2, PAD)), rng.normal(size=(2, 4)),
          np.stack([np.ones(PAD), 3.0 * np.ones(PAD)])]  # g2 = 3 g1
  outs = aggregate("mgda", jacs, dtype)
  tol = 1e-5 if dtype == jnp.float32 else 1e-9
  for jac, out in zip(jacs, outs):
    want = ref.mgda_two(jac[0], jac[1])
    np.testing.assert_allclose(out, want, atol=tol * np.linalg.norm(jac))


@pytest.mark.parametrize("hparams", [
    {"normalization": "loss+"},                      # LibMTL's convention
    {"normalization": "l2", "weights_on": "raw"},    # the official code's
])
def test_mgda_normalizations(hparams):
  rng = np.random.default_rng(3)
  k = 3
  jac = rng.normal(size=(k, PAD)) * np.exp(rng.normal(size=(k, 1)))
  losses = np.array([0.5, 2.0, 1.3])
  with jax.enable_x64(True):
    fn = jax.jit(lambda j, l: W.aggregate("mgda", j, losses=l, **hparams))
    out = fn.lower(jac, losses).compile(
        compiler_options={"xla_backend_optimization_level": 0})(jac, losses)
  want = ref.mgda(jac, losses=losses, **hparams)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6, atol=1e-9)


# The ridge each solver adds to the trace-normalised Gramian: with it the
# non-conflict guarantee reads (J g)_k >= -ridge trace(G) w_k, w the weights.
NON_CONFLICTING = {"mgda": 0.0, "upgrad": 1e-4, "dualproj": 1e-4,
                   "nash_mtl": 0.0}


@pytest.mark.parametrize("name", list(NON_CONFLICTING))
def test_non_conflicting(name, dtype):
  """J g >= 0, up to the ridge, for the methods that promise it."""
  rng = np.random.default_rng(4)
  k = 5
  jacs = [rng.normal(size=(k, PAD)), rng.normal(size=(k, 4)) + 0.5,
          rng.normal(size=(k, PAD)) * np.exp(rng.normal(size=(k, 1)))]
  for jac, g in zip(jacs, aggregate(name, jacs, dtype)):
    slack = 1e-5 * np.linalg.norm(jac) * np.linalg.norm(g)
    if NON_CONFLICTING[name]:
      if jac.shape[1] < k:
        continue  # the weights cannot be recovered from the update
      w = np.linalg.lstsq(jac.T, g, rcond=None)[0]
      slack = slack + NON_CONFLICTING[name] * np.sum(jac * jac) * np.maximum(
          w, 0.0)
    assert np.all(jac @ g >= -slack), (name, jac @ g, slack)


def test_upgrad_equals_mean_without_conflict():
  """No conflict: the mean.  Also torchjd's absolute ``norm_eps``: a
  Jacobian with ||J||_F^2 < 1e-4 gets the mean even when rows conflict."""
  rng = np.random.default_rng(5)
  # Non-negative rows: pairwise non-negative inner products, no conflict.
  jacs = [np.abs(rng.normal(size=(5, p))) for p in (PAD, 4)]
  jacs.append(1e-4 * rng.normal(size=(5, PAD)))  # ||J||_F^2 ~ 2.5e-6
  for name in ("upgrad", "dualproj"):
    for jac, out in zip(jacs, aggregate(name, jacs, jnp.float32)):
      np.testing.assert_allclose(out, jac.mean(0), rtol=1e-5, atol=1e-9)


def test_cagrad_ball_and_worst_case_improvement():
  """The CAGrad update (rescale=0) lies on the ball ||d - g_0|| = c ||g_0||
  and improves the worst task over g_0 (the primal problem)."""
  rng = np.random.default_rng(6)
  c = 0.5
  jacs = [rng.normal(size=(2, PAD)) + 0.3, rng.normal(size=(2, 4)),
          np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])]
  outs = aggregate("cagrad", jacs, jnp.float32, c=c, rescale=0)
  for jac, out in zip(jacs, outs):
    g0 = jac.mean(0)
    np.testing.assert_allclose(np.linalg.norm(out - g0),
                               c * np.linalg.norm(g0), rtol=1e-4)
    assert np.min(jac @ out) >= np.min(jac @ g0) - 1e-5 * np.sum(jac * jac)
  with pytest.raises(ValueError, match="rescale"):
    W.build("cagrad", rescale=3)
  with pytest.raises(ValueError, match="c must be"):
    W.build("cagrad", c=-1.0)


def test_nash_mtl_bargaining_condition_and_state():
  """Unclipped weights solve G alpha = 1 / alpha; with update_weights_every=2
  the second step reuses the first step's weights."""
  rng = np.random.default_rng(7)
  k = 3
  jac = rng.normal(size=(k, PAD))
  gram = jac @ jac.T
  strategy = W.build("nash_mtl", update_weights_every=2, max_norm=0.0)

  def body(state, g):
    out = strategy.weigh(state, gramian=g, losses=jnp.ones(k, g.dtype),
                         step=0, key=None)
    return out.state, (out.weights, out.metrics["nash_residual"])

  with jax.enable_x64(True):
    grams = jnp.asarray(np.stack([gram, 4.0 * gram, 4.0 * gram]))
    _, (ws, residuals) = jax.jit(lambda gs: jax.lax.scan(
        body, strategy.init(k), gs))(grams)
  ws = np.asarray(ws)
  np.testing.assert_allclose(ws[0] * (gram @ ws[0]), 1.0, atol=1e-7)
  assert float(residuals[0]) < 1e-7
  np.testing.assert_allclose(ws[1], ws[0], rtol=1e-6)  # reused (float32 state)
  np.testing.assert_allclose(ws[2], ws[0] / 2.0, rtol=1e-8)  # G -> 4 G


def test_nash_mtl_clips_to_max_norm(dtype):
  rng = np.random.default_rng(8)
  jacs = [rng.normal(size=(5, p)) + 0.5 for p in (PAD, 4, PAD)]
  for out in aggregate("nash_mtl", jacs, dtype):
    # alpha^T G alpha = K = 5 > 1: clipped to norm max_norm = 1.
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_mode_and_bad_options(name):
  assert W.build(name).default_mode == "params"
  strategy = W.build(name, mode="rep")
  assert strategy.default_mode == "rep"
  assert strategy.hparams["mode"] == "rep"
  with pytest.raises(ValueError, match="mode"):
    W.build(name, mode="representation")


def test_bad_options_name_the_valid_ones():
  with pytest.raises(ValueError, match="'l2'"):
    W.build("mgda", normalization="L2")
  with pytest.raises(ValueError, match="weights_on"):
    W.build("mgda", weights_on="both")
  with pytest.raises(ValueError, match="reg_eps"):
    W.build("upgrad", reg_eps=0.0)
  with pytest.raises(ValueError, match="pref_vector"):
    W.build("dualproj", pref_vector=[1.0, 2.0]).init(3)
  with pytest.raises(ValueError, match="update_weights_every"):
    W.build("nash_mtl", update_weights_every=0)
