"""Evaluation over a whole split: metrics computed exactly, not per batch."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from mtrec_jax.data.pipeline import eval_batches, num_rows
from mtrec_jax.tasks.metrics import compute_metrics
from mtrec_jax.tasks.spec import TaskSpec


def make_predict_fn(model, tasks: Sequence[TaskSpec]):
  """Jitted ``(params, batch) -> ({task: predictions}, {task: mean loss})``."""

  @jax.jit
  def predict(params, batch):
    out = model.apply({"params": params}, batch, train=False)
    preds = {t.name: t.predict(out[t.name]) for t in tasks}
    losses = {t.name: t.loss(out[t.name], batch) for t in tasks}
    return preds, losses

  return predict


def evaluate(predict_fn, params, arrays: Mapping[str, np.ndarray],
             tasks: Sequence[TaskSpec], batch_size: int, split: str
             ) -> dict[str, float]:
  """``{"<split>/<task>/<metric>": value}`` plus each task's loss and
  ``"<split>/loss"``, the mean task loss (the default selection metric).

  Losses are example-weighted means over batches, hence exact for unmasked
  tasks; metrics are computed once on all predictions.
  """
  n = num_rows(arrays)
  preds: dict[str, list] = {t.name: [] for t in tasks}
  loss_sums = {t.name: 0.0 for t in tasks}
  for batch in eval_batches(arrays, batch_size):
    p, l = predict_fn(params, batch)
    b = num_rows(batch)
    for t in tasks:
      preds[t.name].append(np.asarray(p[t.name]))
      loss_sums[t.name] += float(l[t.name]) * b
  out: dict[str, float] = {}
  for t in tasks:
    pred = np.concatenate(preds[t.name])
    label = np.asarray(arrays[t.label])
    mask = None if t.mask is None else np.asarray(arrays[t.mask])
    exclude = None
    if t.exclude is not None:
      if t.exclude not in arrays:
        raise ValueError(f"task {t.name!r}: split {split!r} has no exclusion "
                         f"column {t.exclude!r} for its ranking metrics")
      exclude = np.asarray(arrays[t.exclude])
    for name, value in compute_metrics(t, pred, label, mask,
                                       exclude).items():
      out[f"{split}/{t.name}/{name}"] = float(value)
    out[f"{split}/{t.name}/loss"] = loss_sums[t.name] / n
  out[f"{split}/loss"] = float(np.mean([out[f"{split}/{t.name}/loss"]
                                        for t in tasks]))
  return out
