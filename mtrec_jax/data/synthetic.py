"""Built-in synthetic multi-task datasets (no download, deterministic by seed).

Each builder takes a keyword-only `seed` and returns a `Dataset` whose
`info` records the ground truth an experiment can check against.

Randomness: `numpy.random.SeedSequence(seed)` is spawned into independent
streams, one for the task parameters and one per split.  So the task functions
do not depend on the split sizes, and growing `n_test` leaves the train split
unchanged.  Everything is generated in float64 and stored as float32.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from mtrec_jax.data.dataset import SPLITS, Dataset
from mtrec_jax.registry import DATASETS
from mtrec_jax.specs import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec

Columns = dict[str, np.ndarray]


# ----------------------------------------------------------------------------
# Helpers shared by the builders.


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _rngs(seed: int
          ) -> tuple[np.random.Generator, dict[str, np.random.Generator]]:
  """Independent generators: (task parameters, {split: data})."""
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  params, *splits = np.random.SeedSequence(int(seed)).spawn(1 + len(SPLITS))
  return (np.random.default_rng(params),
          {s: np.random.default_rng(ss) for s, ss in zip(SPLITS, splits)})


def _sizes(n_train: int, n_val: int, n_test: int) -> dict[str, int]:
  sizes = {"train": n_train, "val": n_val, "test": n_test}
  for split, n in sizes.items():
    if not _is_int(n) or n < 0:
      raise ValueError(f"n_{split} must be a non-negative int, got {n!r}")
  if n_train < 1:
    raise ValueError("n_train must be at least 1")
  return {k: int(v) for k, v in sizes.items()}


def _sample_splits(seed: int, sizes: dict[str, int],
                   make_params: Callable[[np.random.Generator], dict],
                   sample: Callable[[np.random.Generator, int, dict], Columns]
                   ) -> tuple[dict, dict[str, Columns]]:
  """Draws the task parameters, then each split from its own stream."""
  param_rng, split_rngs = _rngs(seed)
  params = make_params(param_rng)
  splits = {s: sample(split_rngs[s], n, params) for s, n in sizes.items()}
  return params, splits


def _regression_tasks(names: Sequence[str], labels: Sequence[str],
                      width: int = 1) -> tuple[TaskSpec, ...]:
  return tuple(TaskSpec(name=name, label=label, head="regression",
                        num_classes=width)
               for name, label in zip(names, labels))


def _f32(columns: dict[str, np.ndarray]) -> Columns:
  return {k: np.ascontiguousarray(v, dtype=np.float32)
          for k, v in columns.items()}


def _check_int(name: str, value, minimum: int = 1) -> int:
  if not _is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def _check_nonnegative(name: str, value) -> float:
  value = float(value)
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
  return value


def _rms(a: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 else math.nan


# ----------------------------------------------------------------------------
# (a) Ma et al., KDD 2018 (MMoE), section 4.


def mmoe_weights(rng: np.random.Generator, input_dim: int, scale: float,
                 correlation: float) -> tuple[np.ndarray, np.ndarray]:
  """w1 = c u1, w2 = c (rho u1 + sqrt(1 - rho^2) u2), u1 and u2 orthonormal.

  u1, u2 come from Gram-Schmidt on two Gaussian vectors, so cos(w1, w2) = rho
  exactly (up to rounding) and |w1| = |w2| = c.
  """
  g1, g2 = rng.standard_normal((2, input_dim))
  u1 = g1 / np.linalg.norm(g1)
  v = g2 - (g2 @ u1) * u1
  u2 = v / np.linalg.norm(v)
  w1 = scale * u1
  w2 = scale * (correlation * u1 + math.sqrt(1.0 - correlation**2) * u2)
  return w1, w2


def mmoe_label_function(x: np.ndarray, w: np.ndarray, alphas: np.ndarray,
                        betas: np.ndarray) -> np.ndarray:
  """The noiseless label w^T x + sum_i sin(alpha_i w^T x + beta_i)."""
  t = x @ w
  return t + np.sin(t[:, None] * alphas + betas).sum(axis=1)


@DATASETS.register("mmoe_synthetic", storable=True)
def mmoe_synthetic(*, seed: int, input_dim: int = 100, scale: float = 0.3,
                   num_sinusoids: int = 5, correlation: float = 0.5,
                   noise_std: float = 0.1, n_train: int = 10000,
                   n_val: int = 1000, n_test: int = 1000,
                   shape_seed: Optional[int] = 0) -> Dataset:
  """Two regression tasks with a controlled correlation (MMoE paper, sec. 4).

  y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k, with
  x ~ N(0, I_d), alpha_i, beta_i ~ N(0, 1) shared by both tasks, and
  eps_k ~ N(0, 0.01) (noise_std 0.1) as in the paper.  `correlation` is the
  cosine rho of w1 and w2, the knob the paper sweeps; the labels' own Pearson
  correlation falls with rho but is not equal to it (the sinusoids bend it),
  so `info` reports both.

  The paper treats c (`scale`) as a free scale constant; c = 0.3 is our
  default, as are d = 100 and m = 5; set them to match another setup.
  Labels are raw (not standardised).

  In the paper alpha_i, beta_i are "given parameters" that fix the shape of
  the task functions: the same in every run.  They are drawn once from
  N(0, 1) with `numpy.random.default_rng(shape_seed)` (default 0), so runs
  with different seeds differ in u1, u2, x and noise but face the same
  function shapes (with isotropic x, the direction of u1, u2 does not change
  the difficulty).  `shape_seed=None` redraws them from each data seed, which
  makes task difficulty vary a lot from seed to seed (test MSE 0.05 to 0.5
  on 5k rows).

  Columns: 'x' [N, d]; labels 'y1', 'y2' [N] for tasks 'task1', 'task2'.
  """
  input_dim = _check_int("input_dim", input_dim, 2)
  num_sinusoids = _check_int("num_sinusoids", num_sinusoids, 0)
  scale = float(scale)
  if not scale > 0 or not math.isfinite(scale):
    raise ValueError(f"scale must be finite and > 0, got {scale!r}")
  correlation = float(correlation)
  if not -1.0 <= correlation <= 1.0:
    raise ValueError(f"correlation must lie in [-1, 1], got {correlation!r}")
  noise_std = _check_nonnegative("noise_std", noise_std)
  sizes = _sizes(n_train, n_val, n_test)

  def make_params(rng):
    w1, w2 = mmoe_weights(rng, input_dim, scale, correlation)
    shape_rng = rng if shape_seed is None else np.random.default_rng(
        _check_int("shape_seed", shape_seed, 0))
    alphas = shape_rng.standard_normal(num_sinusoids)
    betas = shape_rng.standard_normal(num_sinusoids)
    return {"w1": w1, "w2": w2, "alphas": alphas, "betas": betas}

  def sample(rng, n, p):
    x = rng.standard_normal((n, input_dim))
    f = [mmoe_label_function(x, p[w], p["alphas"], p["betas"])
         for w in ("w1", "w2")]
    noise = noise_std * rng.standard_normal((2, n))
    return _f32({"x": x, "y1": f[0] + noise[0], "y2": f[1] + noise[1]})

  params, splits = _sample_splits(seed, sizes, make_params, sample)
  w1, w2 = params["w1"], params["w2"]
  train_x = splits["train"]["x"].astype(np.float64)
  noiseless = [mmoe_label_function(train_x, w, params["alphas"],
                                   params["betas"]) for w in (w1, w2)]
  info = {
      "paper": "Ma et al., KDD 2018, sec. 4 (MMoE synthetic data)",
      "correlation": correlation,
      "cosine": float(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2))),
      "label_correlation": _pearson(*noiseless),
      "noise_std": noise_std,
      "noise_variance": noise_std**2,
      "scale": scale,
      "input_dim": input_dim,
      "num_sinusoids": num_sinusoids,
      "shape_seed": shape_seed,
      "alphas": params["alphas"].tolist(),
      "betas": params["betas"].tolist(),
      "w1": w1.tolist(),
      "w2": w2.tolist(),
  }
  return Dataset(
      name="mmoe_synthetic", splits=splits,
      features=(FeatureSpec("x", "numeric", dim=input_dim),),
      tasks=_regression_tasks(("task1", "task2"), ("y1", "y2")), info=info)


# ----------------------------------------------------------------------------
# (b) Chen et al., ICML 2018 (GradNorm), section 4 toy.


def default_gradnorm_sigmas(num_tasks: int) -> list[float]:
  """Task scales spread geometrically over [1, 100] (our choice; the paper's
  two-task example uses sigma = (1, 100))."""
  return np.geomspace(1.0, 100.0, num_tasks).tolist()


@DATASETS.register("gradnorm_toy", storable=True)
def gradnorm_toy(*, seed: int, num_tasks: Optional[int] = None,
                 sigmas: Optional[Sequence[float]] = None,
                 input_dim: int = 250, output_dim: int = 100,
                 b_std: float = 10.0, eps_std: float = 3.5,
                 n_train: int = 10000, n_val: int = 1000,
                 n_test: int = 1000) -> Dataset:
  """T vector-regression tasks of very different scales (GradNorm, sec. 4).

  f_i(x) = sigma_i tanh((B + eps_i) x), x in R^250, f_i(x) in R^100, with B
  and eps_i constant matrices of i.i.d. N(0, 10) and N(0, 3.5) entries: B is
  shared information, eps_i task-specific, sigma_i sets task i's scale, so
  the task losses differ by up to sigma_max^2 / sigma_min^2.  The paper writes
  N(0, 10) and N(0, 3.5); we read the second number as the standard deviation
  (`b_std`, `eps_std`), as public re-implementations do.  x ~ N(0, I) (the
  paper does not say; our choice).  Labels are noiseless, as in the paper.

  Defaults: T = 10 tasks with sigmas geometric over [1, 100]; pass `sigmas`
  (T is then its length) to choose them.

  Columns: 'x' [N, input_dim]; labels 'y0'..'y{T-1}' [N, output_dim] for
  regression tasks 'task0'.. with num_classes = output_dim.
  """
  if sigmas is None:
    num_tasks = _check_int("num_tasks",
                                    10 if num_tasks is None else num_tasks)
    sigmas = default_gradnorm_sigmas(num_tasks)
  else:
    sigmas = [float(s) for s in sigmas]
    if num_tasks is not None and num_tasks != len(sigmas):
      raise ValueError(f"num_tasks={num_tasks} but {len(sigmas)} sigmas given; "
                       f"give one sigma per task (or drop num_tasks)")
    num_tasks = _check_int("len(sigmas)", len(sigmas))
    if not all(math.isfinite(s) and s > 0 for s in sigmas):
      raise ValueError(f"sigmas must be finite and > 0, got {sigmas}")
  input_dim = _check_int("input_dim", input_dim)
  output_dim = _check_int("output_dim", output_dim)
  b_std = _check_nonnegative("b_std", b_std)
  eps_std = _check_nonnegative("eps_std", eps_std)
  sizes = _sizes(n_train, n_val, n_test)
  labels = [f"y{i}" for i in range(num_tasks)]

  def make_params(rng):
    b = b_std * rng.standard_normal((output_dim, input_dim))
    eps = eps_std * rng.standard_normal((num_tasks, output_dim, input_dim))
    return {"matrices": b + eps}

  def sample(rng, n, p):
    x = rng.standard_normal((n, input_dim))
    cols = {"x": x}
    for label, sigma, m in zip(labels, sigmas, p["matrices"]):
      cols[label] = sigma * np.tanh(x @ m.T)
    return _f32(cols)

  _, splits = _sample_splits(seed, sizes, make_params, sample)
  train = splits["train"]
  info = {
      "paper": "Chen et al., ICML 2018, sec. 4 (GradNorm toy)",
      "sigmas": list(sigmas),
      "num_tasks": num_tasks,
      "input_dim": input_dim,
      "output_dim": output_dim,
      "b_std": b_std,
      "eps_std": eps_std,
      "label_rms": [_rms(train[label]) for label in labels],
  }
  return Dataset(
      name="gradnorm_toy", splits=splits,
      features=(FeatureSpec("x", "numeric", dim=input_dim),),
      tasks=_regression_tasks([f"task{i}" for i in range(num_tasks)], labels,
                              output_dim),
      info=info)


# ----------------------------------------------------------------------------
# (c) Known per-task noise, for Kendall et al., CVPR 2018.


def uncertainty_function(x: np.ndarray, linear: np.ndarray,
                         sin_weights: np.ndarray,
                         sin_freq: float) -> np.ndarray:
  """The shared noiseless target a^T x + sin(freq * b^T x)."""
  return x @ linear + np.sin(sin_freq * (x @ sin_weights))


@DATASETS.register("uncertainty_toy", storable=True)
def uncertainty_toy(*, seed: int, noise_stds: Sequence[float] = (0.5, 1.0, 2.0),
                    input_dim: int = 16, sin_freq: float = 3.0,
                    n_train: int = 10000, n_val: int = 1000,
                    n_test: int = 1000) -> Dataset:
  """K regression tasks: one shared function plus known, different noise.

  y_k = a^T x + sin(freq * b^T x) + sigma_k eps_k, x ~ N(0, I_d), a and b
  ~ N(0, I_d / d) (so both projections are about N(0, 1)), eps_k ~ N(0, 1).
  All tasks share the function and differ only in noise, so under Kendall,
  Gal and Cipolla (CVPR 2018) homoscedastic-uncertainty weighting the learned
  variances should approach `info['noise_variances']` = sigma_k^2 (the
  irreducible MSE of task k).

  Columns: 'x' [N, d]; labels 'y0'..'y{K-1}' [N] for tasks 'task0'...
  """
  noise_stds = [float(s) for s in noise_stds]
  if not noise_stds:
    raise ValueError("noise_stds needs at least one task")
  for s in noise_stds:
    _check_nonnegative("each noise std", s)
  input_dim = _check_int("input_dim", input_dim)
  sin_freq = float(sin_freq)
  sizes = _sizes(n_train, n_val, n_test)
  labels = [f"y{i}" for i in range(len(noise_stds))]

  def make_params(rng):
    a, b = rng.standard_normal((2, input_dim)) / math.sqrt(input_dim)
    return {"linear": a, "sin_weights": b}

  def sample(rng, n, p):
    x = rng.standard_normal((n, input_dim))
    f = uncertainty_function(x, p["linear"], p["sin_weights"], sin_freq)
    noise = rng.standard_normal((len(noise_stds), n))
    cols = {"x": x}
    cols.update({label: f + std * eps
                 for label, std, eps in zip(labels, noise_stds, noise)})
    return _f32(cols)

  params, splits = _sample_splits(seed, sizes, make_params, sample)
  info = {
      "paper": "Kendall et al., CVPR 2018 (uncertainty weighting check)",
      "noise_stds": list(noise_stds),
      "noise_variances": [s**2 for s in noise_stds],
      "input_dim": input_dim,
      "sin_freq": sin_freq,
      "linear_weights": params["linear"].tolist(),
      "sin_weights": params["sin_weights"].tolist(),
  }
  return Dataset(
      name="uncertainty_toy", splits=splits,
      features=(FeatureSpec("x", "numeric", dim=input_dim),),
      tasks=_regression_tasks([f"task{i}" for i in range(len(noise_stds))],
                              labels),
      info=info)
