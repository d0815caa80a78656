"""Task specifications: what a task predicts, its loss and its metrics.

A `TaskSpec` is a small frozen (hashable) value, so it can be closed over or
passed as a static argument to a jitted train step.  The model produces one
[B, out_dim] float output per task; the spec turns it into a scalar loss (for
the weighting strategy) and into predictions (for the exact metrics in
`mtrec_jax.tasks.metrics`).

Heads, labels and losses:

* ``binary``: label [B] in {0, 1}; sigmoid cross-entropy on the logit.
* ``regression``: label [B] (``num_classes`` 1) or a vector [B, C]
  (``num_classes`` C > 1, e.g. the GradNorm toy); squared error, averaged over
  the vector.
* ``multiclass``: integer label [B] in [0, C); softmax cross-entropy.
* ``multilabel``: label [B, C] in {0, 1}; sigmoid cross-entropy averaged over
  the C labels.

An optional ``mask`` column ([B] 0/1) marks examples that have a label; the
loss is the mean over masked-in examples, 0 when there are none, and the
labels of masked-out examples may hold anything (even NaN or -1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from mtrec_jax.registry import UnknownNameError, unknown_name_message
from mtrec_jax.tasks import metrics as metrics_lib

HEADS = metrics_lib.HEADS


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One prediction task of a multi-task model.

  Attributes:
    name: task name, used in logs, metric keys and strategy outputs.
    label: batch key of the label column.
    head: 'binary', 'regression', 'multiclass' or 'multilabel'.
    num_classes: classes (multiclass), labels (multilabel) or the width of a
      vector regression target; 1 for binary and scalar regression.
    metrics: metric names; empty means the head's defaults.
    mask: optional batch key of a [B] 0/1 float mask of labelled examples.
    exclude: optional column of [N, M] 0-padded item ids the ranking metrics
      of a multiclass (next-item) task leave out (the user's history); read
      only by evaluation, so training splits need not have it.
  """
  name: str
  label: str
  head: str
  num_classes: int = 1
  metrics: tuple[str, ...] = ()
  mask: str | None = None
  exclude: str | None = None

  def __post_init__(self):
    for field in ("name", "label"):
      value = getattr(self, field)
      if not isinstance(value, str) or not value:
        raise ValueError(f"TaskSpec.{field} must be a non-empty string, "
                         f"got {value!r}")
    if self.head not in HEADS:
      raise UnknownNameError(
          f"task {self.name!r}: " + unknown_name_message("head", self.head,
                                                         HEADS))
    if isinstance(self.num_classes, bool) or not isinstance(
        self.num_classes, int):
      raise ValueError(f"task {self.name!r}: num_classes must be an int, got "
                       f"{self.num_classes!r}")
    minimum = {"binary": 1, "regression": 1, "multiclass": 2, "multilabel": 1}
    if self.num_classes < minimum[self.head]:
      raise ValueError(f"task {self.name!r}: a {self.head} head needs "
                       f"num_classes >= {minimum[self.head]}, got "
                       f"{self.num_classes}")
    if self.head == "binary" and self.num_classes != 1:
      raise ValueError(f"task {self.name!r}: a binary head has num_classes=1 "
                       f"(got {self.num_classes}); use 'multilabel' for "
                       f"several binary labels")
    if isinstance(self.metrics, str):
      raise ValueError(f"task {self.name!r}: metrics must be a sequence of "
                       f"names, got the string {self.metrics!r}")
    object.__setattr__(self, "metrics", tuple(self.metrics))
    metrics_lib.check_metrics_for_head(self.head, self.metrics,
                                       f"task {self.name!r}: ")
    if self.mask is not None and (not isinstance(self.mask, str) or
                                  not self.mask):
      raise ValueError(f"task {self.name!r}: mask must be a batch key or None, "
                       f"got {self.mask!r}")
    if self.exclude is not None and (not isinstance(self.exclude, str) or
                                     not self.exclude):
      raise ValueError(f"task {self.name!r}: exclude must be a column name or "
                       f"None, got {self.exclude!r}")

  # --------------------------------------------------------------------------
  # Shapes.

  @property
  def out_dim(self) -> int:
    """Width of the model output for this task."""
    return 1 if self.head == "binary" else self.num_classes

  @property
  def pred_shape(self) -> tuple[int, ...]:
    """Per-example shape of `predict` output: () or (C,)."""
    return () if self.out_dim == 1 else (self.out_dim,)

  @property
  def label_shape(self) -> tuple[int, ...]:
    """Per-example shape of the label: () or (C,)."""
    if self.head == "multiclass":
      return ()
    return self.pred_shape

  @property
  def default_metrics(self) -> tuple[str, ...]:
    return metrics_lib.DEFAULT_METRICS[self.head]

  @property
  def metric_names(self) -> tuple[str, ...]:
    """The metrics to report: the configured ones, else the head's defaults."""
    return self.metrics or self.default_metrics

  # --------------------------------------------------------------------------
  # Loss and prediction (jittable).

  def _outputs(self, outputs: jax.Array) -> jax.Array:
    outputs = jnp.asarray(outputs, jnp.float32)
    if outputs.ndim == 1 and self.out_dim == 1:
      outputs = outputs[:, None]
    if outputs.ndim != 2 or outputs.shape[1] != self.out_dim:
      raise ValueError(f"task {self.name!r}: outputs need shape "
                       f"[B, {self.out_dim}], got {outputs.shape}")
    return outputs

  def _label(self, batch: Mapping[str, Any], batch_size: int) -> jax.Array:
    if self.label not in batch:
      raise UnknownNameError(
          f"task {self.name!r}: " +
          unknown_name_message("label column", self.label, batch))
    label = jnp.asarray(batch[self.label])
    expected = (batch_size,) + self.label_shape
    if label.shape != expected:
      raise ValueError(f"task {self.name!r}: label {self.label!r} needs shape "
                       f"{list(expected)}, got {list(label.shape)}")
    return label

  def example_mask(self, batch: Mapping[str, Any],
                   batch_size: int) -> jax.Array | None:
    """The task's [B] float32 mask, or None when the task has no mask."""
    if self.mask is None:
      return None
    if self.mask not in batch:
      raise UnknownNameError(
          f"task {self.name!r}: " +
          unknown_name_message("mask column", self.mask, batch))
    mask = jnp.asarray(batch[self.mask], jnp.float32)
    if mask.shape != (batch_size,):
      raise ValueError(f"task {self.name!r}: mask {self.mask!r} needs shape "
                       f"[{batch_size}], got {list(mask.shape)}")
    return mask

  def per_example_loss(self, outputs: jax.Array,
                       batch: Mapping[str, Any]) -> jax.Array:
    """[B] float32 loss of each example (masked-out labels are zeroed first,
    so a NaN placeholder label cannot leak NaN into values or gradients)."""
    outputs = self._outputs(outputs)
    batch_size = outputs.shape[0]
    label = self._label(batch, batch_size)
    mask = self.example_mask(batch, batch_size)
    if mask is not None:
      keep = (mask > 0).reshape((batch_size,) + (1,) * (label.ndim - 1))
      label = jnp.where(keep, label, jnp.zeros_like(label))
    if self.head == "binary":
      return optax.sigmoid_binary_cross_entropy(outputs[:, 0],
                                                label.astype(jnp.float32))
    if self.head == "multilabel":
      return jnp.mean(optax.sigmoid_binary_cross_entropy(
          outputs, label.astype(jnp.float32)), axis=-1)
    if self.head == "multiclass":
      return optax.softmax_cross_entropy_with_integer_labels(
          outputs, label.astype(jnp.int32))
    # Regression: squared error, averaged over a vector target.
    target = label.astype(jnp.float32).reshape(outputs.shape)
    return jnp.mean(jnp.square(outputs - target), axis=-1)

  def loss(self, outputs: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
    """Scalar float32 loss: mean over the (masked-in) examples of the batch.

    With a mask the mean is sum(mask * loss) / sum(mask), and exactly 0 (with
    zero gradient) when the mask is all zero.
    """
    per_example = self.per_example_loss(outputs, batch)
    mask = self.example_mask(batch, per_example.shape[0])
    if mask is None:
      return jnp.mean(per_example)
    per_example = jnp.where(mask > 0, per_example, 0.0)
    total = jnp.sum(mask)
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(per_example * mask) / safe_total, 0.0)

  def predict(self, outputs: jax.Array) -> jax.Array:
    """Predictions for metrics: probabilities, or values for regression.

    binary: sigmoid [B]; regression: [B] (or [B, C] for a vector target);
    multiclass: softmax [B, C]; multilabel: sigmoid [B, C].
    """
    outputs = self._outputs(outputs)
    if self.head == "binary":
      return jax.nn.sigmoid(outputs[:, 0])
    if self.head == "multilabel":
      return jax.nn.sigmoid(outputs)
    if self.head == "multiclass":
      return jax.nn.softmax(outputs, axis=-1)
    return outputs[:, 0] if self.out_dim == 1 else outputs


_FIELDS = tuple(f.name for f in dataclasses.fields(TaskSpec))
_REQUIRED = ("name", "label", "head")


def task_from_config(cfg: Any) -> TaskSpec:
  """Builds a TaskSpec from a dict or an ml_collections ConfigDict.

  Keys are the TaskSpec fields; `metrics` may be any sequence of names.
  Unknown keys raise `UnknownNameError` naming the closest valid keys.
  """
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise TypeError(f"task config must be a mapping or ConfigDict, got "
                    f"{type(cfg).__name__}")
  for key in cfg:
    if key not in _FIELDS:
      raise UnknownNameError(unknown_name_message("task config key", key,
                                                  _FIELDS))
  missing = [k for k in _REQUIRED if k not in cfg]
  if missing:
    raise ValueError(f"task config {dict(cfg)!r} lacks required key(s) "
                     f"{', '.join(missing)}")
  kwargs = dict(cfg)
  if kwargs.get("metrics") is None:
    kwargs.pop("metrics", None)
  elif not isinstance(kwargs["metrics"], str):
    kwargs["metrics"] = tuple(kwargs["metrics"])
  return TaskSpec(**kwargs)
