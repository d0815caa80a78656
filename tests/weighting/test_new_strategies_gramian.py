"""FairGrad, ConFIG, MoDo, SDMGrad, CR-MOGM, STCH and Aligned-MTL's scale modes
against the independent references of `reference_new.py`.

`aggregate(name, J)` is compared with the reference on every Jacobian of the
shared hard corpus (`hard_jacobians.py`: random, K > P, conflicting,
opposite, scaled, identical, zero-row, orthogonal, rank-deficient, nearly
parallel and all-zero cases), in float64 and float32: cosine >= 0.999 and
norm within 2%, and a (numerically) zero update exactly where the reference
gives one.  Golden values (closed forms and hand-computed small examples)
and the stateful behaviour (MoDo, SDMGrad, CR-MOGM, STCH over several calls)
are checked too.

Compile cost: one compilation per (strategy, hyper-parameters, dtype, K):
the corpus's Jacobians with the same K are zero-padded to a common P and
vmapped (zero columns change neither the Gramian nor these updates).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtrec_jax.weighting as W

try:
  from tests.weighting import reference as ref
  from tests.weighting import reference_new as refn
  from tests.weighting.hard_jacobians import CORPUS
except ImportError:  # tests/ not importable as a package.
  import reference as ref  # type: ignore[no-redef]
  import reference_new as refn  # type: ignore[no-redef]
  from hard_jacobians import CORPUS  # type: ignore[no-redef]


@functools.lru_cache(maxsize=None)
def _batched(name: str, hparams: tuple, shape: tuple, dtype_name: str):
  kwargs = dict(hparams)
  fn = jax.jit(jax.vmap(lambda j: W.aggregate(name, j, **kwargs)))
  example = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype_name))
  return fn.lower(example).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def aggregate_corpus(name: str, dtype, **hparams) -> dict[str, np.ndarray]:
  """`aggregate` on every corpus Jacobian, batched by K (zero-padded P)."""
  by_k: dict[int, list] = {}
  for case, jac in CORPUS:
    by_k.setdefault(jac.shape[0], []).append((case, jac))
  out = {}
  for k, cases in sorted(by_k.items()):
    pad = max(j.shape[1] for _, j in cases)
    batch = np.zeros((len(cases), k, pad))
    for i, (_, j) in enumerate(cases):
      batch[i, :, :j.shape[1]] = j
    fn = _batched(name, tuple(sorted(hparams.items())), batch.shape,
                  jnp.dtype(dtype).name)
    res = np.asarray(fn(jnp.asarray(batch, dtype)), np.float64)
    for i, (case, j) in enumerate(cases):
      np.testing.assert_array_equal(res[i, j.shape[1]:], 0.0)
      out[case] = res[i, :j.shape[1]]
  return out


def assert_agrees(got: np.ndarray, want: np.ndarray, scale: float,
                  where: str, zero_tol: float = 1e-5) -> None:
  """cos >= 0.999 and norms within 2%; where the reference is zero (below
  1e-9 of `scale`, the size of the terms that cancel), the update must be
  below ``zero_tol * scale``."""
  assert np.all(np.isfinite(got)), where
  nw, ng = np.linalg.norm(want), np.linalg.norm(got)
  if nw <= 1e-9 * scale:
    assert ng <= zero_tol * scale, (where, ng, scale)
    return
  assert ng > 0, (where, "zero update where the reference has", nw)
  cos = got @ want / (ng * nw)
  assert cos >= 0.999, (where, cos)
  assert abs(ng - nw) <= 0.02 * nw, (where, ng, nw)


def _weights_scale(jac, weights):
  return float(np.sum(np.abs(weights) * np.linalg.norm(jac, axis=1)))


# --------------------------------------------------------------------------
# Reference agreement on the hard corpus.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_matches_reference(alpha, dtype):
  reg = 1e-10 if dtype == jnp.float64 else 1e-5  # `default_reg_eps`
  got = aggregate_corpus("fairgrad", dtype, alpha=alpha)
  for case, jac in CORPUS:
    w = refn.fairgrad_weights(jac @ jac.T, alpha, reg)
    assert_agrees(got[case], w @ jac, _weights_scale(jac, w),
                  f"fairgrad alpha={alpha} {case}")


def test_fairgrad_other_alphas_float64():
  """alpha = 0.5 and 5 with the ridge 1e-8 (an explicit reg_eps; the
  reference is slow to reach the weights ~1e-10^(-a/(a+1)) of the default)."""
  with jax.enable_x64(True):
    for alpha in (0.5, 5.0):
      got = aggregate_corpus("fairgrad", jnp.float64, alpha=alpha,
                             reg_eps=1e-8)
      for case, jac in CORPUS:
        w = refn.fairgrad_weights(jac @ jac.T, alpha, 1e-8)
        assert_agrees(got[case], w @ jac, _weights_scale(jac, w),
                      f"fairgrad alpha={alpha} {case}")


@pytest.mark.parametrize("name,reference", [
    ("config", refn.config), ("modo", refn.modo), ("sdmgrad", refn.sdmgrad)])
def test_matches_reference(name, reference, dtype):
  got = aggregate_corpus(name, dtype)
  for case, jac in CORPUS:
    assert_agrees(got[case], reference(jac), max(np.linalg.norm(jac), 1e-300),
                  f"{name} {case}")


def test_cr_mogm_aggregate_is_the_inner_strategy(dtype):
  """From a fresh state CR-MOGM applies the inner weights unchanged."""
  got = aggregate_corpus("cr_mogm", dtype, inner="sdmgrad")
  want = aggregate_corpus("sdmgrad", dtype)
  for case, jac in CORPUS:
    np.testing.assert_allclose(got[case], want[case], rtol=1e-6,
                               atol=1e-6 * np.linalg.norm(jac), err_msg=case)
  # The default inner strategy, MGDA (one random case: MGDA compiles slowly).
  jac = dict(CORPUS)["random_k3_p10"]
  got = np.asarray(W.aggregate("cr_mogm", jnp.asarray(jac, dtype)))
  assert_agrees(got, ref.mgda(jac), np.linalg.norm(jac), "cr_mogm(mgda)")


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_scale_modes_match_svd_reference(scale_mode, dtype):
  got = aggregate_corpus("aligned_mtl", dtype, scale_mode=scale_mode)
  for case, jac in CORPUS:
    if not (case.startswith("random") or case.startswith("k_gt_p")
            or case.startswith("orthogonal") or case.startswith("scaled")):
      continue  # rank decisions on exactly degenerate cases differ by dtype
    assert_agrees(got[case], refn.aligned_mtl(jac, scale_mode=scale_mode),
                  np.linalg.norm(jac), f"aligned_mtl {scale_mode} {case}")


def test_aligned_mtl_default_scale_mode_is_torchjds():
  assert W.build("aligned_mtl").hparams["scale_mode"] == "min"
  with pytest.raises(ValueError, match="scale_mode must be one of"):
    W.build("aligned_mtl", scale_mode="max")


# --------------------------------------------------------------------------
# Golden values and closed forms.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_fairgrad_orthogonal_closed_form(alpha):
  """Orthogonal rows: G diagonal, so ``w_i = ||g_i||^(-2 alpha/(alpha+1))``
  (up to the ridge 1e-10 on the trace-normalised Gramian: ~1e-8 relative)."""
  with jax.enable_x64(True):
    norms = np.array([0.5, 2.0, 8.0])
    jac = np.diag(norms) @ np.eye(3, 6)
    got = np.asarray(W.aggregate("fairgrad", jnp.asarray(jac), alpha=alpha))
    want = (norms ** (-2 * alpha / (alpha + 1)))[:, None] * jac
    np.testing.assert_allclose(got, want.sum(0), rtol=1e-7)


def test_fairgrad_alpha1_is_the_nash_bargaining_solution():
  with jax.enable_x64(True):
    jac = np.random.default_rng(3).normal(size=(4, 9))
    got = np.asarray(W.aggregate("fairgrad", jnp.asarray(jac)))
    np.testing.assert_allclose(got, ref.nash_alpha(jac @ jac.T) @ jac,
                               rtol=1e-7)
    # alpha = 0: linear scalarisation, the mean gradient (torchjd).
    got0 = np.asarray(W.aggregate("fairgrad", jnp.asarray(jac), alpha=0.0))
    np.testing.assert_allclose(got0, jac.mean(0), rtol=1e-12)


def test_config_golden_values():
  with jax.enable_x64(True):
    # Orthogonal rows of equal norm: the update is their sum (sum-like
    # scale).  Norms 0.5, 2, 8: the direction (1, 1, 1) / sqrt(3) has equal
    # cosines, and the length is the summed projections 10.5 / sqrt(3).
    jac = np.eye(3, 6)
    np.testing.assert_allclose(
        np.asarray(W.aggregate("config", jnp.asarray(jac))), jac.sum(0),
        rtol=1e-12)
    jac = np.diag([0.5, 2.0, 8.0]) @ np.eye(3, 6)
    np.testing.assert_allclose(
        np.asarray(W.aggregate("config", jnp.asarray(jac))),
        [3.5, 3.5, 3.5, 0.0, 0.0, 0.0], rtol=1e-12, atol=1e-15)
    # Independent rows: equal cosine with every gradient (conflict-free).
    jac = np.random.default_rng(4).normal(size=(4, 7)) * np.array(
        [[0.1], [1.0], [10.0], [1.0]])
    upd = np.asarray(W.aggregate("config", jnp.asarray(jac)))
    cos = jac @ upd / (np.linalg.norm(jac, axis=1) * np.linalg.norm(upd))
    np.testing.assert_allclose(cos, cos[0], rtol=1e-9)
    assert cos[0] > 0
    # Preference vector (torchjd's ConFIG(pref_vector=...)).
    pref = [1.0, 2.0, 0.5, 1.0]
    upd = np.asarray(W.aggregate("config", jnp.asarray(jac), pref_vector=pref))
    np.testing.assert_allclose(upd, refn.config(jac, pref), rtol=1e-9)


def test_config_reported_weights_reproduce_the_update():
  with jax.enable_x64(True):
    s = W.build("config")
    for jac in (np.random.default_rng(5).normal(size=(3, 8)),
                np.random.default_rng(6).normal(size=(5, 3))):
      upd, out = s.aggregate((), jacobian=jnp.asarray(jac), losses=None,
                             step=0, key=None)
      np.testing.assert_allclose(np.asarray(out.weights) @ jac,
                                 np.asarray(upd), rtol=1e-9, atol=1e-12)


def test_modo_hand_computed_step():
  """G = diag(1, 4), gamma = rho = 0.1 from lambda = (1/2, 1/2):
  lambda - gamma (G + rho I) lambda = (0.445, 0.295), projected onto the
  simplex by adding 0.13 to both: (0.575, 0.425)."""
  s = W.build("modo")
  out = s.weigh(s.init(2), gramian=jnp.diag(jnp.array([1.0, 4.0])),
                losses=jnp.ones(2), step=0, key=None)
  np.testing.assert_allclose(np.asarray(out.weights), [0.575, 0.425],
                             rtol=1e-6)
  # The second call continues from the stored lambda.
  out2 = s.weigh(out.state, gramian=jnp.diag(jnp.array([1.0, 4.0])),
                 losses=jnp.ones(2), step=1, key=None)
  want = refn.modo_weights(np.diag([1.0, 4.0]), lam=np.array([0.575, 0.425]))
  np.testing.assert_allclose(np.asarray(out2.weights), want, rtol=1e-6)


def test_sdmgrad_state_and_mgda_limit():
  with jax.enable_x64(True):
    rng = np.random.default_rng(7)
    s = W.build("sdmgrad")
    state = s.init(3)
    w_ref = None
    for t in range(3):  # warm-started inner weights across calls
      jac = rng.normal(size=(3, 6))
      gram = jac @ jac.T
      out = s.weigh(state, gramian=jnp.asarray(gram), losses=jnp.ones(3),
                    step=t, key=None)
      want, w_ref = refn.sdmgrad_weights(gram, w=w_ref)
      np.testing.assert_allclose(np.asarray(out.weights), want, rtol=1e-9,
                                 atol=1e-12)
      state = out.state
    # lambda_ = 0, small steps, many iterations: the MGDA weights.
    jac = np.random.default_rng(8).normal(size=(3, 6))
    got = np.asarray(W.aggregate("sdmgrad", jnp.asarray(jac), lambda_=0.0,
                                 lr=0.2, n_iter=3000))
    np.testing.assert_allclose(got, ref.mgda(jac), rtol=1e-6, atol=1e-9)


def test_cr_mogm_smooths_over_steps():
  with jax.enable_x64(True):
    rng = np.random.default_rng(9)
    grams = [(lambda j: j @ j.T)(rng.normal(size=(3, 5))) for _ in range(5)]
    for alpha, init in ((0.9, None), (0.5, [0.2, 0.3, 0.5]), (0.0, None)):
      s = W.build("cr_mogm", inner="modo", alpha=alpha, initial_weights=init)
      state = s.init(3)
      inner_w, lam = [], None
      got = []
      for t, g in enumerate(grams):
        out = s.weigh(state, gramian=jnp.asarray(g), losses=jnp.ones(3),
                      step=t, key=None)
        state = out.state
        got.append(np.asarray(out.weights))
        lam = refn.modo_weights(g, lam=lam)
        inner_w.append(lam)
      want = refn.cr_mogm_weights(inner_w, alpha, init)
      np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-6)


def test_cr_mogm_wraps_loss_strategies_and_refuses_jacobian_ones():
  s = W.build("cr_mogm", inner="stch", inner_hparams={"warmup_epochs": 0})
  assert s.kind == "loss"
  with pytest.raises(ValueError, match="kind 'jacobian'"):
    W.build("cr_mogm", inner="graddrop")
  with pytest.raises(ValueError, match="alpha must be in"):
    W.build("cr_mogm", alpha=1.5)
  with pytest.raises(ValueError, match="initial weights"):
    W.build("cr_mogm", initial_weights=[1.0, 0.0]).init(3)


def test_stch_schedule_and_weights():
  """warmup_epochs = 1, steps_per_epoch = 2: calls 0-1 warm up, calls 2-3
  warm up and average the nadir vector, calls 4+ use STCH (LibMTL's epoch
  schedule with 2-step epochs)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(10)
    losses = rng.uniform(0.2, 3.0, size=(7, 3))
    for mu in (1.0, 0.3):
      s = W.build("stch", mu=mu, warmup_epochs=1, steps_per_epoch=2)
      state = s.init(3)
      nadir = losses[2:4].mean(0)
      for t in range(7):
        out = s.weigh(state, losses=jnp.asarray(losses[t]), step=t, key=None)
        state = out.state
        want = refn.stch_weights(losses[t], None if t < 4 else nadir, mu)
        np.testing.assert_allclose(np.asarray(out.weights), want, rtol=1e-6,
                                   err_msg=f"mu={mu} call {t}")
        assert int(out.metrics["stch_active"]) == int(t >= 4)
      # mu = 1 closed form: w_k = K / (z_k sum_j L_j / z_j) (the nadir is
      # kept in the float32 strategy state: 1e-7 relative).
      if mu == 1.0:
        l = losses[6]
        np.testing.assert_allclose(np.asarray(out.weights),
                                   3 / (nadir * np.sum(l / nadir)), rtol=1e-6)


# --------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,hparams,match", [
    ("fairgrad", {"alpha": -1.0}, "alpha must be >= 0"),
    ("fairgrad", {"reg_eps": 0.0}, "reg_eps must be > 0"),
    ("modo", {"gamma": 0.0}, "gamma must be > 0"),
    ("modo", {"rho": -0.1}, "rho must be >= 0"),
    ("sdmgrad", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ("sdmgrad", {"n_iter": 0}, "n_iter must be a positive integer"),
    ("stch", {"mu": 0.0}, "mu must be > 0"),
    ("stch", {"steps_per_epoch": 0}, "steps_per_epoch must be"),
])
def test_bad_hyperparameters(name, hparams, match):
  with pytest.raises(ValueError, match=match):
    W.build(name, **hparams)


def test_preference_length_is_checked():
  for name in ("config", "sdmgrad"):
    with pytest.raises(ValueError, match="one per task"):
      W.build(name, pref_vector=[1.0, 1.0]).init(3)
