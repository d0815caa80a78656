"""Evaluation over a whole split: metrics computed exactly, not per batch."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from mtrec_jax.data.pipeline import eval_batches, num_rows
from mtrec_jax.tasks.metrics import compute_metrics
from mtrec_jax.tasks.spec import TaskSpec


# Evaluation draws of auxiliary tasks (masks, augmentations, KG queries):
# batch i of every evaluation uses fold_in(EVAL_KEY, i), so validation losses
# of auxiliary tasks are comparable across evaluations and runs.
EVAL_SEED = 0


def make_predict_fn(model, tasks: Sequence[TaskSpec]):
  """Jitted ``(params, batch, index) -> ({task: predictions}, {task: mean
  loss})``; auxiliary tasks (`model.aux_names`) give a loss only."""
  aux_names = tuple(getattr(model, "aux_names", ()))
  aux_eval = tuple(t.eval_task for t in getattr(model, "aux_tasks", ())
                   if t.eval_task is not None)

  @jax.jit
  def jitted(params, batch, index):
    out = model.apply({"params": params}, batch, train=False)
    preds = {t.name: t.predict(out[t.name]) for t in tasks}
    if aux_eval:
      scores = model.apply({"params": params}, batch, method="aux_scores")
      preds.update({t.name: t.predict(scores[t.name]) for t in aux_eval})
    losses = {t.name: t.loss(out[t.name], batch) for t in tasks}
    if aux_names:
      key = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), index)
      aux = model.apply({"params": params}, batch, key, train=False,
                        method="aux_losses")
      losses.update({n: aux[i] for i, n in enumerate(aux_names)})
    return preds, losses

  def predict(params, batch, index=0):
    return jitted(params, batch, index)

  predict.aux_names = aux_names
  predict.aux_eval_tasks = aux_eval
  return predict


def evaluate(predict_fn, params, arrays: Mapping[str, np.ndarray],
             tasks: Sequence[TaskSpec], batch_size: int, split: str
             ) -> dict[str, float]:
  """``{"<split>/<task>/<metric>": value}`` plus each task's loss and
  ``"<split>/loss"``, the mean task loss (the default selection metric),
  auxiliary tasks included (they report only their loss).

  Losses are example-weighted means over batches, hence exact for unmasked
  tasks; metrics are computed once on all predictions.
  """
  n = num_rows(arrays)
  aux_names = tuple(getattr(predict_fn, "aux_names", ()))
  # Tasks with metrics: the model's, then auxiliary ones that rank items.
  scored = tuple(tasks) + tuple(getattr(predict_fn, "aux_eval_tasks", ()))
  preds: dict[str, list] = {t.name: [] for t in scored}
  loss_sums = {name: 0.0 for name in [t.name for t in tasks] + list(aux_names)}
  for index, batch in enumerate(eval_batches(arrays, batch_size)):
    p, l = predict_fn(params, batch, index)
    b = num_rows(batch)
    for t in scored:
      preds[t.name].append(np.asarray(p[t.name]))
    for name in loss_sums:
      loss_sums[name] += float(l[name]) * b
  out: dict[str, float] = {}
  for t in scored:
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
  for t in tasks:
    out[f"{split}/{t.name}/loss"] = loss_sums[t.name] / n
  for name in aux_names:
    out[f"{split}/{name}/loss"] = loss_sums[name] / n
  out[f"{split}/loss"] = float(np.mean([out[f"{split}/{name}/loss"]
                                        for name in loss_sums]))
  return out
