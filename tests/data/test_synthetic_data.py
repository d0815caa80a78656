"""Built-in synthetic datasets: determinism, shapes and the ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mtrec_jax.data import synthetic
from mtrec_jax.data.dataset import Dataset
from mtrec_jax.registry import DATASETS

SMALL = {
    "mmoe_synthetic": dict(n_train=300, n_val=50, n_test=40),
    "gradnorm_toy": dict(n_train=200, n_val=30, n_test=20, num_tasks=3,
                         input_dim=20, output_dim=5),
    "uncertainty_toy": dict(n_train=300, n_val=50, n_test=40),
}


def build(name, seed=0, **kwargs):
  return DATASETS.get(name)(seed=seed, **{**SMALL[name], **kwargs})


def assert_same(a: Dataset, b: Dataset):
  assert a.splits.keys() == b.splits.keys()
  for split in a.splits:
    assert a.splits[split].keys() == b.splits[split].keys()
    for key in a.splits[split]:
      np.testing.assert_array_equal(a.splits[split][key], b.splits[split][key])
  assert a.info == b.info


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registered_deterministic_and_seed_dependent(name):
  assert name in DATASETS
  a, b, c = build(name, 3), build(name, 3), build(name, 4)
  assert_same(a, b)
  assert not np.array_equal(a.splits["train"]["x"], c.splits["train"]["x"])
  assert not np.array_equal(a.splits["train"]["y1"], c.splits["train"]["y1"])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_dtypes_and_tasks(name):
  ds = build(name)
  sizes = {"train": SMALL[name]["n_train"], "val": SMALL[name]["n_val"],
           "test": SMALL[name]["n_test"]}
  for split, n in sizes.items():
    assert ds.num_examples(split) == n
    for array in ds.splits[split].values():
      assert array.dtype == np.float32 and array.shape[0] == n
  (feature,) = ds.features
  assert feature.name == "x" and feature.kind == "numeric"
  assert ds.splits["train"]["x"].shape[1] == feature.dim
  for task in ds.tasks:
    assert task.head == "regression"
    assert ds.splits["train"][task.label].shape[1:] == task.label_shape


@pytest.mark.parametrize("name", sorted(SMALL))
def test_splits_are_independent_of_other_split_sizes(name):
  a = build(name)
  b = build(name, n_test=SMALL[name]["n_test"] + 7, n_val=3)
  for key in a.splits["train"]:
    np.testing.assert_array_equal(a.splits["train"][key],
                                  b.splits["train"][key])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_unknown_kwarg_is_a_type_error(name):
  with pytest.raises(TypeError):
    build(name, not_a_parameter=1)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="correlation"):
    build("mmoe_synthetic", correlation=1.5)
  with pytest.raises(ValueError, match="seed"):
    build("mmoe_synthetic", seed=-1)
  with pytest.raises(ValueError, match="n_train"):
    build("uncertainty_toy", n_train=0)
  with pytest.raises(ValueError, match="one sigma per task"):
    build("gradnorm_toy", sigmas=[1.0, 2.0])  # SMALL sets num_tasks=3


# ----------------------------------------------------------------------------
# MMoE (Ma et al., KDD 2018).


def mmoe_truth(x, w, info):
  """The paper's noiseless label, recomputed from info independently."""
  t = x.astype(np.float64) @ np.asarray(w)
  out = t.copy()
  for a, b in zip(info["alphas"], info["betas"]):
    out += np.sin(a * t + b)
  return out


@pytest.mark.parametrize("rho", [-0.7, 0.0, 0.3, 0.5, 0.9, 1.0])
def test_mmoe_weight_cosine_is_the_correlation(rho):
  info = build("mmoe_synthetic", correlation=rho, scale=0.7).info
  w1, w2 = np.array(info["w1"]), np.array(info["w2"])
  cos = w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2))
  assert abs(cos - rho) < 1e-6
  assert abs(info["cosine"] - rho) < 1e-6
  np.testing.assert_allclose([np.linalg.norm(w1), np.linalg.norm(w2)], 0.7,
                             rtol=1e-12)


def test_mmoe_label_correlation_falls_with_rho():
  corrs = []
  for rho in (0.9, 0.5, 0.1):
    ds = build("mmoe_synthetic", correlation=rho, n_train=4000)
    train = ds.splits["train"]
    f1 = mmoe_truth(train["x"], ds.info["w1"], ds.info)
    f2 = mmoe_truth(train["x"], ds.info["w2"], ds.info)
    corr = np.corrcoef(f1, f2)[0, 1]
    assert ds.info["label_correlation"] == pytest.approx(corr, abs=1e-4)
    corrs.append(corr)
  assert corrs[0] > corrs[1] > corrs[2]


def test_mmoe_noise_std_and_defaults():
  ds = build("mmoe_synthetic", n_train=20000)
  assert ds.info["noise_std"] == 0.1 and ds.info["scale"] == 0.3
  assert len(ds.info["w1"]) == 100 and len(ds.info["alphas"]) == 5
  train = ds.splits["train"]
  for w, label in (("w1", "y1"), ("w2", "y2")):
    residual = train[label] - mmoe_truth(train["x"], ds.info[w], ds.info)
    assert abs(residual.mean()) < 0.005
    assert residual.std() == pytest.approx(0.1, rel=0.03)
  assert [t.name for t in ds.tasks] == ["task1", "task2"]


# ----------------------------------------------------------------------------
# GradNorm toy (Chen et al., ICML 2018).


def test_gradnorm_scales_follow_sigmas():
  sigmas = [1.0, 10.0, 100.0]
  ds = build("gradnorm_toy", sigmas=sigmas, num_tasks=None)
  train = ds.splits["train"]
  rms = np.array([np.sqrt(np.mean(train[f"y{i}"].astype(np.float64) ** 2))
                  for i in range(3)])
  np.testing.assert_allclose(rms, ds.info["label_rms"], rtol=1e-6)
  # tanh is bounded by 1, and with the paper's N(0, 10) entries it saturates.
  for i, s in enumerate(sigmas):
    assert np.abs(train[f"y{i}"]).max() <= s * (1 + 1e-6)
  np.testing.assert_allclose(rms / sigmas, rms[0] / sigmas[0], rtol=0.05)
  assert all(t.num_classes == 5 and t.out_dim == 5 for t in ds.tasks)


def test_gradnorm_defaults_and_task_specific_functions():
  assert synthetic.default_gradnorm_sigmas(10)[0] == pytest.approx(1.0)
  assert synthetic.default_gradnorm_sigmas(10)[-1] == pytest.approx(100.0)
  ds = build("gradnorm_toy", num_tasks=4)
  assert ds.info["sigmas"] == pytest.approx(
      synthetic.default_gradnorm_sigmas(4))
  train = ds.splits["train"]
  # Same shared B, different eps_i: normalised targets differ across tasks.
  a = train["y0"] / ds.info["sigmas"][0]
  b = train["y1"] / ds.info["sigmas"][1]
  assert not np.allclose(a, b, atol=1e-3)
  assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5  # B is shared


# ----------------------------------------------------------------------------
# Uncertainty toy (Kendall et al., CVPR 2018).


def test_uncertainty_residual_variance_is_the_noise_variance():
  stds = (0.5, 1.0, 2.0)
  ds = build("uncertainty_toy", noise_stds=stds, n_train=20000)
  assert ds.info["noise_variances"] == pytest.approx([s * s for s in stds])
  train = ds.splits["train"]
  x = train["x"].astype(np.float64)
  f = (x @ np.array(ds.info["linear_weights"]) +
       np.sin(ds.info["sin_freq"] * (x @ np.array(ds.info["sin_weights"]))))
  for i, s in enumerate(stds):
    residual = train[f"y{i}"] - f
    assert residual.var() == pytest.approx(s * s, rel=0.05)
  # The same check without the info: var(y_i - y_j) = s_i^2 + s_j^2.
  diff = train["y0"].astype(np.float64) - train["y2"]
  assert diff.var() == pytest.approx(stds[0] ** 2 + stds[2] ** 2, rel=0.05)
  assert len(ds.tasks) == 3 and math.isclose(ds.info["noise_stds"][1], 1.0)


def test_mmoe_function_shapes_are_given_parameters():
  mmoe_synthetic = synthetic.mmoe_synthetic
  """alpha, beta fixed by shape_seed across data seeds (the paper's 'given
  parameters'); shape_seed=None redraws them from each seed."""
  small = dict(n_train=5, n_val=1, n_test=1)
  a = mmoe_synthetic(seed=0, **small).info
  b = mmoe_synthetic(seed=1, **small).info
  assert a["alphas"] == b["alphas"] and a["betas"] == b["betas"]
  assert a["w1"] != b["w1"]
  assert mmoe_synthetic(seed=1, shape_seed=5, **small).info["alphas"] != \
      b["alphas"]
  c = mmoe_synthetic(seed=0, shape_seed=None, **small).info
  d = mmoe_synthetic(seed=1, shape_seed=None, **small).info
  assert c["alphas"] != d["alphas"]
