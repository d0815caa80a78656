"""Exact metrics against brute-force references written with plain loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.tasks import metrics
from mtrec_jax.tasks.spec import TaskSpec

EPS = 1e-7


# ----------------------------------------------------------------------------
# Independent references (O(n^2) / Python loops).


def brute_auc(score, label, weight=None):
  """Pairwise counting: ties between a positive and a negative count 1/2."""
  n = len(score)
  weight = np.ones(n) if weight is None else weight
  num = den = 0.0
  for i in range(n):
    if label[i] != 1 or weight[i] == 0:
      continue
    for j in range(n):
      if label[j] != 0 or weight[j] == 0:
        continue
      w = weight[i] * weight[j]
      den += w
      if score[i] > score[j]:
        num += w
      elif score[i] == score[j]:
        num += 0.5 * w
  return num / den if den else math.nan


def brute_mean(values, weight):
  total = norm = 0.0
  for v, w in zip(values, weight):
    total += w * v
    norm += w
  return total / norm


def clip(p):
  return min(max(p, EPS), 1 - EPS)


def brute_binary_logloss(pred, label, weight):
  return brute_mean([-(y * math.log(clip(p)) + (1 - y) * math.log(1 - clip(p)))
                     for p, y in zip(pred, label)], weight)


def ties_data(rng, n, levels=5):
  """Scores on a coarse grid so that many positive/negative pairs tie."""
  score = rng.integers(0, levels, n) / (levels - 1)
  label = (rng.random(n) < 0.4).astype(np.float64)
  return score, label


# ----------------------------------------------------------------------------
# AUC.


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  score, label = ties_data(rng, 150, levels=3 + seed)
  assert metrics.auc(score, label) == pytest.approx(brute_auc(score, label),
                                                    abs=1e-12)


def test_auc_matches_rank_sum_with_average_ranks():
  rng = np.random.default_rng(7)
  score, label = ties_data(rng, 2000, levels=7)
  ranks = scipy.stats.rankdata(score)  # average ranks for ties
  n_pos, n_neg = label.sum(), (1 - label).sum()
  u = ranks[label == 1].sum() - n_pos * (n_pos + 1) / 2
  assert metrics.auc(score, label) == pytest.approx(u / (n_pos * n_neg),
                                                    abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_auc_matches_weighted_pairwise_count(seed):
  rng = np.random.default_rng(100 + seed)
  score, label = ties_data(rng, 120)
  weight = rng.choice([0.0, 0.5, 1.0, 2.0], size=120)
  assert metrics.auc(score, label, weight) == pytest.approx(
      brute_auc(score, label, weight), abs=1e-12)


def test_auc_edge_cases():
  assert metrics.auc(np.array([0.1, 0.9]), np.array([0.0, 1.0])) == 1.0
  assert metrics.auc(np.array([0.9, 0.1]), np.array([0.0, 1.0])) == 0.0
  assert metrics.auc(np.full(6, 0.3), np.array([0.0, 1.0] * 3)) == 0.5
  # One class only, or nothing left after masking: NaN, not an exception.
  assert math.isnan(metrics.auc(np.array([0.2, 0.4]), np.ones(2)))
  assert math.isnan(metrics.auc(np.array([0.2, 0.4]), np.array([0.0, 1.0]),
                                np.zeros(2)))
  # A diverged model gets NaN, never a good-looking number.
  assert math.isnan(metrics.auc(np.array([np.nan, 0.4]), np.array([0.0, 1.0])))


def test_multilabel_auc_is_macro_over_labels_with_both_classes():
  rng = np.random.default_rng(3)
  n, c = 80, 4
  pred = rng.integers(0, 4, (n, c)) / 3
  label = (rng.random((n, c)) < 0.5).astype(np.float64)
  label[:, 2] = 1.0  # one class only: skipped
  expected = np.mean([brute_auc(pred[:, j], label[:, j]) for j in (0, 1, 3)])
  assert metrics.auc(pred, label) == pytest.approx(expected, abs=1e-12)
  assert math.isnan(metrics.auc(pred, np.ones((n, c))))


# ----------------------------------------------------------------------------
# Log-loss, accuracy, regression metrics.


def test_binary_logloss_and_accuracy_against_loops():
  rng = np.random.default_rng(0)
  pred = rng.random(300)
  pred[:3] = [0.0, 1.0, 0.5]  # clipped / exactly at the threshold
  label = (rng.random(300) < 0.5).astype(np.float64)
  weight = rng.choice([0.0, 1.0], 300)
  for w in (None, weight):
    ww = np.ones(300) if w is None else w
    assert metrics.logloss(pred, label, w) == pytest.approx(
        brute_binary_logloss(pred, label, ww), rel=1e-12)
    correct = [float((1.0 if p > 0.5 else 0.0) == y) for p, y in
               zip(pred, label)]
    assert metrics.accuracy(pred, label, w) == pytest.approx(
        brute_mean(correct, ww), rel=1e-12)


def test_logloss_is_finite_for_confident_mistakes():
  value = metrics.logloss(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
  assert value == pytest.approx(-math.log(EPS), rel=1e-6)


def test_multiclass_logloss_and_accuracy_against_loops():
  rng = np.random.default_rng(1)
  n, c = 200, 5
  logits = rng.normal(size=(n, c))
  pred = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  label = rng.integers(0, c, n)
  nll = [-math.log(clip(pred[i, label[i]])) for i in range(n)]
  hits = [float(max(range(c), key=lambda k: pred[i, k]) == label[i])
          for i in range(n)]
  assert metrics.logloss(pred, label) == pytest.approx(np.mean(nll), rel=1e-12)
  assert metrics.accuracy(pred, label) == pytest.approx(np.mean(hits),
                                                        rel=1e-12)


def test_multilabel_logloss_averages_over_labels():
  rng = np.random.default_rng(2)
  n, c = 50, 3
  pred = rng.random((n, c))
  label = (rng.random((n, c)) < 0.5).astype(np.float64)
  per_example = [np.mean([brute_binary_logloss([pred[i, j]], [label[i, j]],
                                               [1.0]) for j in range(c)])
                 for i in range(n)]
  assert metrics.logloss(pred, label) == pytest.approx(np.mean(per_example),
                                                       rel=1e-12)


@pytest.mark.parametrize("shape", [(100,), (100, 4)])
def test_regression_metrics_against_loops(shape):
  rng = np.random.default_rng(4)
  pred, label = rng.normal(size=shape), rng.normal(size=shape)
  weight = rng.choice([0.0, 1.0, 3.0], shape[0])
  flat_w = np.repeat(weight, int(np.prod(shape[1:])))
  err = (pred - label).ravel()
  expected_mse = brute_mean([e * e for e in err], flat_w)
  assert metrics.mse(pred, label, weight) == pytest.approx(expected_mse,
                                                           rel=1e-12)
  assert metrics.rmse(pred, label, weight) == pytest.approx(
      math.sqrt(expected_mse), rel=1e-12)
  assert metrics.mae(pred, label, weight) == pytest.approx(
      brute_mean([abs(e) for e in err], flat_w), rel=1e-12)


def test_mask_equals_metric_on_the_kept_subset_and_ignores_nan_labels():
  rng = np.random.default_rng(5)
  pred = rng.random(100)
  label = (rng.random(100) < 0.5).astype(np.float64)
  mask = (rng.random(100) < 0.6).astype(np.float64)
  noisy = np.where(mask > 0, label, np.nan)  # missing labels may be NaN
  keep = mask > 0
  for name in ("auc", "logloss", "accuracy", "mse", "mae"):
    fn = metrics.get_metric(name)
    assert fn(pred, noisy, mask) == pytest.approx(fn(pred[keep], label[keep]),
                                                  rel=1e-12)


def test_empty_or_all_masked_sets_give_nan():
  for name in metrics.METRICS:
    assert math.isnan(metrics.METRICS[name](np.array([0.3, 0.6]),
                                            np.array([0.0, 1.0]),
                                            np.zeros(2)))


def test_bad_labels_and_shapes_raise():
  with pytest.raises(ValueError, match="binary labels"):
    metrics.logloss(np.array([0.2, 0.3]), np.array([0.0, 2.0]))
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    metrics.accuracy(np.full((2, 3), 1 / 3), np.array([0, 3]))
  with pytest.raises(ValueError, match="first dim"):
    metrics.mse(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match="label shape"):
    metrics.mse(np.zeros((3, 2)), np.zeros(3))
  with pytest.raises(ValueError, match="weight"):
    metrics.mse(np.zeros(3), np.zeros(3), np.array([1.0, -1.0, 1.0]))


def test_direction_and_unknown_metric():
  assert metrics.direction("auc") == "max"
  assert metrics.direction("accuracy") == "max"
  for name in ("logloss", "mse", "rmse", "mae"):
    assert metrics.direction(name) == "min"
  with pytest.raises(UnknownNameError, match="'logloss'"):
    metrics.direction("loglos")


# ----------------------------------------------------------------------------
# Task-level entry points.


def test_compute_metrics_uses_head_defaults_and_checks_shapes():
  rng = np.random.default_rng(6)
  task = TaskSpec("ctr", "click", "binary")
  pred, label = rng.random(50), (rng.random(50) < 0.5).astype(np.float32)
  out = metrics.compute_metrics(task, pred, label)
  assert tuple(out) == ("auc", "logloss", "accuracy")
  assert out["auc"] == pytest.approx(brute_auc(pred, label), abs=1e-12)
  # [N, 1] predictions are accepted for scalar heads.
  assert metrics.compute_metrics(task, pred[:, None], label) == out
  with pytest.raises(ValueError, match="predictions"):
    metrics.compute_metrics(task, rng.random((50, 2)), label)
  vec = TaskSpec("toy", "y", "regression", num_classes=3)
  out = metrics.compute_metrics(vec, np.zeros((4, 3)), np.ones((4, 3)))
  assert out == {"mse": 1.0, "rmse": 1.0, "mae": 1.0}
  with pytest.raises(ValueError, match="labels"):
    metrics.compute_metrics(vec, np.zeros((4, 3)), np.ones(4))


def test_default_metrics_per_head():
  assert TaskSpec("a", "y", "regression").metric_names == ("mse", "rmse", "mae")
  assert TaskSpec("a", "y", "multiclass", 3).metric_names == ("accuracy",
                                                              "logloss")
  assert TaskSpec("a", "y", "multilabel", 3).metric_names == ("auc", "logloss")
  assert TaskSpec("a", "y", "binary", metrics=("auc",)).metric_names == ("auc",)


def test_compute_all_metrics_prefixes_task_names_and_uses_masks():
  tasks = (TaskSpec("ctr", "click", "binary", metrics=("accuracy",)),
           TaskSpec("rating", "r", "regression", metrics=("mae",), mask="m"))
  columns = {"click": np.array([1.0, 0.0]), "r": np.array([3.0, np.nan]),
             "m": np.array([1.0, 0.0])}
  preds = {"ctr": np.array([0.9, 0.6]), "rating": np.array([2.5, 0.0])}
  assert metrics.compute_all_metrics(tasks, preds, columns) == {
      "ctr/accuracy": 0.5, "rating/mae": 0.5}


def test_ranking_metrics_through_compute_metrics_use_the_exclusion_column():
  from mtrec_jax.tasks import ranking
  from mtrec_jax.tasks.metrics import compute_metrics, direction
  rng = np.random.default_rng(0)
  n, items = 40, 200
  scores = rng.integers(0, 5, (n, items)).astype(np.float64)
  targets = rng.integers(1, items, n)
  exclude = np.where(rng.random((n, 6)) < 0.7, rng.integers(1, items, (n, 6)),
                     0)
  task = TaskSpec("next", "y", "multiclass", num_classes=items,
                  metrics=("hr@10", "ndcg@5", "mrr", "s_hr@10", "s_ndcg@10"),
                  exclude="hist")
  got = compute_metrics(task, scores, targets, exclude=exclude)
  full = ranking.full_ranking_metrics(scores, targets, exclude, ks=(5, 10))
  assert got["hr@10"] == pytest.approx(full["hr@10"])
  assert got["ndcg@5"] == pytest.approx(full["ndcg@5"])
  assert got["mrr"] == pytest.approx(full["mrr"])
  # SASRec protocol: 100 negatives, seed 0, rows keyed by their position.
  negatives = ranking.sample_negatives(targets, exclude, items, 100, seed=0)
  sampled = ranking.sampled_ranking_metrics(scores, targets, negatives,
                                            ks=(10,))
  assert got["s_hr@10"] == pytest.approx(sampled["hr@10"])
  assert got["s_ndcg@10"] == pytest.approx(sampled["ndcg@10"])
  assert direction("s_hr@10") == "max"
  # Without the exclusion column the history competes: metrics change.
  assert compute_metrics(task, scores, targets)["mrr"] != got["mrr"]
