"""Exact evaluation metrics over a whole evaluation set.

Metrics are computed once, in float64 NumPy, from the concatenated predictions
of every evaluation batch.  They are never averaged over batches: AUC and
log-loss of a mean of per-batch values are not the AUC and log-loss of the
set, and the difference moves model selection.

Conventions (the same for every metric):

* ``pred`` is what `TaskSpec.predict` returns: probabilities for binary,
  multiclass and multilabel heads, values for regression.
* ``weight`` is an optional per-example [N] weight, usually a 0/1 mask of
  examples with a label.  Examples with weight 0 are dropped before anything
  else, so their labels and predictions may be anything (even NaN).
* A metric that is undefined returns NaN instead of raising, so one bad task
  does not stop an evaluation loop: when no example has weight, when AUC sees
  only one class, or when a kept prediction is not finite (a diverged model
  must never get a good-looking number).  Model selection treats NaN as
  missing.

Every metric is registered in `METRICS` (a `registry.Registry`, as every
extension point) with its direction ('max' or 'min'), the task heads it
applies to and whether it reads the task's exclusion column (`context`), as
flags of its registration; `compute_metrics` evaluates the metrics a
`TaskSpec` names.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Literal, Mapping, Optional

import numpy as np

from mtrec_jax.registry import Registry, UnknownNameError
from mtrec_jax.tasks import ranking

if TYPE_CHECKING:
  from mtrec_jax.tasks.spec import TaskSpec

MetricFn = Callable[[np.ndarray, np.ndarray, Optional[np.ndarray]], float]
Direction = Literal["max", "min"]

HEADS = ("binary", "regression", "multiclass", "multilabel")

# Probabilities are clipped to [EPS, 1 - EPS] in log-loss (as in scikit-learn's
# historical default) so one confident mistake gives a large, finite loss.
LOGLOSS_EPS = 1e-7

METRICS: Registry = Registry("metric")

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "logloss", "accuracy"),
    "regression": ("mse", "rmse", "mae"),
    "multiclass": ("accuracy", "logloss"),
    "multilabel": ("auc", "logloss"),
}


def register_metric(name: str, direction: Direction,
                    heads: tuple[str, ...], *, context: bool = False
                    ) -> Callable[[MetricFn], MetricFn]:
  """Decorator: registers `fn(pred, label, weight) -> float` under `name`
  (with `context`, `fn(pred, label, weight, exclude=...)`)."""
  if direction not in ("max", "min"):
    raise ValueError(f"metric {name!r}: direction must be 'max' or 'min', "
                     f"got {direction!r}")
  unknown = [h for h in heads if h not in HEADS]
  if unknown:
    raise ValueError(f"metric {name!r}: unknown heads {unknown}; heads are "
                     f"{', '.join(HEADS)}")
  return METRICS.register(name, direction=direction, heads=tuple(heads),
                          context=bool(context))


def get_metric(name: str) -> MetricFn:
  """The metric function registered as `name` (errors name close matches)."""
  return METRICS.get(name)


def direction(metric: str) -> Direction:
  """'max' if a larger value of `metric` is better, else 'min'."""
  return METRICS.info(metric)["direction"]


# ----------------------------------------------------------------------------
# Input preparation shared by every metric.


def _prepare(pred, label, weight, *, categorical: bool = False):
  """Float64 arrays with zero-weight examples dropped.

  Returns (pred, label, weight) with weight of shape [n] (examples kept), or
  None when the metric is undefined (no weight left, or a kept prediction is
  not finite).  With `categorical`, `pred` is [N, C] and `label` is [N].
  """
  pred = np.asarray(pred, np.float64)
  label = np.asarray(label)
  n = pred.shape[0] if pred.ndim else 0
  if pred.ndim == 0 or label.shape[:1] != (n,):
    raise ValueError(f"metric inputs disagree: pred {pred.shape}, "
                     f"label {label.shape}; both need the same first dim")
  expected = pred.shape[:-1] if categorical else pred.shape
  if label.shape != expected:
    raise ValueError(f"label shape {label.shape} does not fit pred shape "
                     f"{pred.shape} (expected label shape {expected})")
  if weight is None:
    weight = np.ones((n,), np.float64)
  else:
    weight = np.asarray(weight, np.float64)
    if weight.shape != (n,):
      raise ValueError(f"weight must have shape [{n}], got {weight.shape}")
    if not np.all(np.isfinite(weight)) or np.any(weight < 0):
      raise ValueError("weights must be finite and non-negative")
  keep = weight > 0
  if not keep.all():
    pred, label, weight = pred[keep], label[keep], weight[keep]
  if weight.sum() <= 0 or not np.all(np.isfinite(pred)):
    return None
  return pred, label, weight


def _check_binary_labels(label: np.ndarray) -> np.ndarray:
  label = np.asarray(label, np.float64)
  if not np.all((label == 0) | (label == 1)):
    bad = np.unique(label[(label != 0) & (label != 1)])[:5]
    raise ValueError(f"binary labels must be 0 or 1; found {bad.tolist()}")
  return label


def _check_class_labels(label: np.ndarray, num_classes: int) -> np.ndarray:
  if label.size and not np.all(np.equal(np.mod(label, 1), 0)):
    raise ValueError("multiclass labels must be integers")
  label = label.astype(np.int64)
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    raise ValueError(f"multiclass labels must lie in [0, {num_classes}); "
                     f"found range [{label.min()}, {label.max()}]")
  return label


def _weighted_mean(values: np.ndarray, weight: np.ndarray) -> float:
  """Mean of [n, ...] values, example weights broadcast over trailing axes."""
  w = weight.reshape(weight.shape + (1,) * (values.ndim - 1))
  w = np.broadcast_to(w, values.shape)
  return float(np.sum(values * w) / np.sum(w))


# ----------------------------------------------------------------------------
# AUC.


def binary_auc(score: np.ndarray, label: np.ndarray,
               weight: np.ndarray) -> float:
  """Weighted ROC AUC of one label column in O(n log n).

  The Mann-Whitney statistic: the weighted fraction of (positive, negative)
  pairs in which the positive scores higher, a tie counting 1/2 (unweighted,
  this equals the rank-sum formula with average ranks).  Examples are sorted
  once; within a group of equal scores a positive beats the negatives of all
  lower groups and ties with the negatives of its own group.  NaN when either
  class has no weight.
  """
  pos_w = weight * label
  neg_w = weight * (1.0 - label)
  total_pos, total_neg = pos_w.sum(), neg_w.sum()
  if total_pos <= 0 or total_neg <= 0:
    return math.nan
  order = np.argsort(score, kind="stable")
  sorted_score = score[order]
  starts = np.concatenate(
      [[0], np.flatnonzero(sorted_score[1:] != sorted_score[:-1]) + 1])
  group_pos = np.add.reduceat(pos_w[order], starts)
  group_neg = np.add.reduceat(neg_w[order], starts)
  neg_below = np.cumsum(group_neg) - group_neg
  wins = np.sum(group_pos * (neg_below + 0.5 * group_neg))
  return float(wins / (total_pos * total_neg))


@register_metric("auc", "max", ("binary", "multilabel"))
def auc(pred, label, weight=None) -> float:
  """ROC AUC (ties count 1/2); NaN when a class is absent.

  For [N, C] multilabel inputs: the macro average over the labels that have
  both classes (the others are skipped; NaN if no label has both).
  """
  prepared = _prepare(pred, label, weight)
  if prepared is None:
    return math.nan
  pred, label, weight = prepared
  label = _check_binary_labels(label)
  if pred.ndim == 1:
    return binary_auc(pred, label, weight)
  per_label = [binary_auc(pred[:, j], label[:, j], weight)
               for j in range(pred.shape[1])]
  defined = [v for v in per_label if not math.isnan(v)]
  return float(np.mean(defined)) if defined else math.nan


# ----------------------------------------------------------------------------
# Classification metrics.


@register_metric("logloss", "min", ("binary", "multiclass", "multilabel"))
def logloss(pred, label, weight=None) -> float:
  """Mean negative log-likelihood, probabilities clipped to [1e-7, 1 - 1e-7].

  Binary [N] / multilabel [N, C] probabilities with 0/1 labels of the same
  shape: binary cross-entropy (multilabel averages over labels too).
  Multiclass [N, C] probabilities with [N] integer labels: -log p[label].
  """
  pred = np.asarray(pred)
  categorical = pred.ndim == np.ndim(label) + 1
  prepared = _prepare(pred, label, weight, categorical=categorical)
  if prepared is None:
    return math.nan
  pred, label, weight = prepared
  pred = np.clip(pred, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
  if categorical:
    label = _check_class_labels(label, pred.shape[1])
    nll = -np.log(np.take_along_axis(pred, label[:, None], axis=1)[:, 0])
  else:
    label = _check_binary_labels(label)
    nll = -(label * np.log(pred) + (1.0 - label) * np.log(1.0 - pred))
  return _weighted_mean(nll, weight)


@register_metric("accuracy", "max", ("binary", "multiclass", "multilabel"))
def accuracy(pred, label, weight=None) -> float:
  """Fraction correct.  Binary/multilabel: predict 1 iff p > 0.5 (multilabel
  averages over labels too); multiclass [N, C] with [N] labels: argmax."""
  pred = np.asarray(pred)
  categorical = pred.ndim == np.ndim(label) + 1
  prepared = _prepare(pred, label, weight, categorical=categorical)
  if prepared is None:
    return math.nan
  pred, label, weight = prepared
  if categorical:
    label = _check_class_labels(label, pred.shape[1])
    correct = np.argmax(pred, axis=1) == label
  else:
    label = _check_binary_labels(label)
    correct = (pred > 0.5) == (label == 1)
  return _weighted_mean(correct.astype(np.float64), weight)


# ----------------------------------------------------------------------------
# Regression metrics (vector targets are averaged over their components too).
# For a binary head they score probabilities: mse is then the Brier score.


def _errors(pred, label, weight):
  prepared = _prepare(pred, label, weight)
  if prepared is None:
    return None
  pred, label, weight = prepared
  return pred - np.asarray(label, np.float64), weight


@register_metric("mse", "min", ("regression", "binary"))
def mse(pred, label, weight=None) -> float:
  """Mean squared error (the Brier score for binary probabilities)."""
  errors = _errors(pred, label, weight)
  return math.nan if errors is None else _weighted_mean(errors[0]**2,
                                                        errors[1])


@register_metric("rmse", "min", ("regression", "binary"))
def rmse(pred, label, weight=None) -> float:
  """Square root of the whole-set MSE (not a mean of per-batch RMSEs)."""
  return math.sqrt(mse(pred, label, weight))


@register_metric("mae", "min", ("regression", "binary"))
def mae(pred, label, weight=None) -> float:
  """Mean absolute error."""
  errors = _errors(pred, label, weight)
  return math.nan if errors is None else _weighted_mean(np.abs(errors[0]),
                                                        errors[1])


# ----------------------------------------------------------------------------
# Task-level entry points.


# ----------------------------------------------------------------------------
# Next-item ranking metrics (multiclass heads over an item vocabulary).
#
# 'hr@K', 'ndcg@K', 'mrr': the target ranked among ALL items, the user's
# history (the task's `exclude` column) and padding id 0 removed.  's_hr@K',
# 's_ndcg@K', 's_mrr': the sampled protocol of SASRec (Kang & McAuley, ICDM
# 2018): the target among 100 items drawn uniformly from those the user has
# not interacted with (seed `SAMPLED_SEED`, row r of the split keyed by r).
# Ties count at their expected position (see `mtrec_jax.tasks.ranking`).

RANKING_CUTOFFS = (1, 5, 10, 20, 50)
SAMPLED_NEGATIVES = 100
SAMPLED_SEED = 0


def _ranking_metric(key: str, sampled: bool):
  def metric(pred, label, weight=None, exclude=None) -> float:
    scores = np.asarray(pred, np.float64)
    targets = np.asarray(label).astype(np.int64)
    rows = np.arange(len(targets))
    if weight is not None:
      keep = np.asarray(weight) > 0
      scores, targets, rows = scores[keep], targets[keep], rows[keep]
      exclude = None if exclude is None else np.asarray(exclude)[keep]
    if len(targets) == 0 or not np.isfinite(scores).all():
      return math.nan
    ks = tuple(sorted(set(RANKING_CUTOFFS)))
    if sampled:
      negatives = ranking.sample_negatives(
          targets, exclude, scores.shape[1], SAMPLED_NEGATIVES, SAMPLED_SEED,
          row_ids=rows)
      values = ranking.sampled_ranking_metrics(scores, targets, negatives, ks)
    else:
      values = ranking.full_ranking_metrics(scores, targets, exclude, ks)
    return float(values[key])

  return metric


for _prefix, _sampled in (("", False), ("s_", True)):
  for _key in [f"{m}@{k}" for k in RANKING_CUTOFFS for m in ("hr", "ndcg")
               ] + ["mrr"]:
    register_metric(_prefix + _key, "max", ("multiclass",), context=True)(
        _ranking_metric(_key, _sampled))


def __getattr__(name: str):
  """Views read off the registrations: CONTEXT_METRICS (those that read the
  exclusion column) and DIRECTIONS ({metric: 'max' | 'min'})."""
  if name == "CONTEXT_METRICS":
    return frozenset(METRICS.names(context=True))
  if name == "DIRECTIONS":
    return {m: METRICS.info(m)["direction"]
            for m in METRICS.names(sort=False)}
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_metrics_for_head(head: str, metrics, where: str = "") -> None:
  """Raises if a metric name is unknown or does not apply to `head`.

  `where` prefixes the message (e.g. "task 'ctr': ").
  """
  for name in metrics:
    try:
      heads = METRICS.info(name)["heads"]
    except UnknownNameError as e:
      raise UnknownNameError(where + str(e)) from None
    if head not in heads:
      raise ValueError(f"{where}metric {name!r} does not apply to a {head!r} "
                       f"head; it applies to {', '.join(heads)}. "
                       f"Metrics for {head!r}: "
                       f"{', '.join(sorted(metrics_for_head(head)))}")


def metrics_for_head(head: str) -> list[str]:
  """Every registered metric that applies to `head`, in registration order."""
  return [m for m in METRICS.names(sort=False)
          if head in METRICS.info(m)["heads"]]


def compute_metrics(task: TaskSpec, pred, label, mask=None,
                    exclude=None) -> dict[str, float]:
  """The task's metrics over a whole evaluation set.

  Args:
    task: the task; its `metric_names` are computed.
    pred: `task.predict(outputs)` concatenated over every evaluation batch
      ([N] for binary and scalar regression, [N, C] otherwise; [N, 1] is
      accepted for the scalar heads).
    label: the matching labels ([N], or [N, C] for multilabel and vector
      regression).
    mask: optional [N] 0/1 (or non-negative) example weights.
    exclude: optional [N, M] item ids each row's ranking metrics leave out
      (the task's `exclude` column: the user's history), 0-padded.

  Returns:
    {metric name: float}, NaN where the metric is undefined.
  """
  pred = np.asarray(pred)
  label = np.asarray(label)
  if task.out_dim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
    pred = pred[:, 0]
  if pred.shape[1:] != task.pred_shape:
    raise ValueError(f"task {task.name!r}: predictions need shape "
                     f"[N{''.join(f', {d}' for d in task.pred_shape)}], "
                     f"got {pred.shape}")
  if label.shape[1:] != task.label_shape:
    raise ValueError(f"task {task.name!r}: labels {task.label!r} need shape "
                     f"[N{''.join(f', {d}' for d in task.label_shape)}], "
                     f"got {label.shape}")
  out = {}
  for name in task.metric_names:
    fn = METRICS.get(name)
    out[name] = (fn(pred, label, mask, exclude=exclude)
                 if METRICS.info(name)["context"] else fn(pred, label, mask))
  return out


def compute_all_metrics(tasks, preds: Mapping[str, np.ndarray],
                        columns: Mapping[str, np.ndarray],
                        sep: str = "/") -> dict[str, float]:
  """Metrics of several tasks, keyed 'task/metric'.

  `preds` maps task name -> predictions; `columns` holds the label and mask
  columns (e.g. a whole evaluation split).
  """
  out = {}
  for task in tasks:
    mask = columns[task.mask] if task.mask else None
    values = compute_metrics(task, preds[task.name], columns[task.label], mask)
    out.update({f"{task.name}{sep}{k}": v for k, v in values.items()})
  return out
