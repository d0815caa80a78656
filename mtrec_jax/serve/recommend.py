"""Top-k recommendation from a loaded run: users or raw histories -> items.

The ranking task is a next-item task of the run: a multiclass task over the
item ids with an exclusion column (the dataset's `next_item`, or the
`next_all` auxiliary task, which evaluation scores the same way).  Items
are ranked by the task's prediction (the softmax probabilities evaluation
ranks), the user's seen items and the padding id 0 set to -inf, and the top
k taken with `jax.lax.top_k` (ties: the lower item id first), in one jitted
function per (task, k) over fixed-size batches.

A user id's history is everything the dataset knows of the user, in time
order: the test row's exclusion column (every interaction before the test
target) and the test target itself, i.e. the recommendation comes after the
user's last known interaction.  Its model input is the test row with the
item sequence replaced by the last max_len items of that history; on
MovieLens's layout (`data/movielens.py`) the aligned `hist_ratings` gets the
test rating appended and `hist_len` the new length.  Other columns keep the
test row's values (predictions of other tasks for such a row, e.g. the
rating of the test target, are not meaningful; the ranking task reads only
the history).  A raw `history` (item ids, oldest first) gives a row whose
other columns are 0 (padding / unknown), or the user's row when a user is
given too.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# MovieLens's layout: a history column that continues with a scalar column
# of the same row (the ratings of the history, then the target's rating),
# and the column holding the history's length.
CONTINUES = {"hist_ratings": "rating"}
LENGTH_COLUMN = "hist_len"


def ranking_tasks(run) -> list:
  """The run's next-item tasks (multiclass with an exclusion column)."""
  return [t for t in run.eval_tasks
          if t.head == "multiclass" and t.exclude is not None]


def ranking_task(run, task: str | None = None):
  tasks = ranking_tasks(run)
  names = [t.name for t in tasks]
  if not tasks:
    raise ValueError(
        f"run {str(run.run_dir)!r} has no next-item task to recommend with "
        f"(its tasks: {', '.join(t.name for t in run.eval_tasks)}); score "
        f"candidates with LoadedRun.score(batch) instead")
  if task is None:
    if len(tasks) > 1:
      raise ValueError(f"run {str(run.run_dir)!r} has several next-item "
                       f"tasks ({', '.join(names)}); pick one with task=")
    return tasks[0]
  if task not in names:
    raise ValueError(f"task {task!r} is not a next-item task of run "
                     f"{str(run.run_dir)!r}; next-item tasks: "
                     f"{', '.join(names)}")
  return tasks[names.index(task)]


def item_feature(run, task_name: str) -> str:
  """The item-id sequence feature the ranking task reads."""
  for t in run.aux_tasks:
    if t.name == task_name and hasattr(t, "feature"):
      return t.feature
  spec = next(t for t in run.eval_tasks if t.name == task_name)
  seqs = [f.name for f in run.dataset.features
          if f.kind == "sequence" and f.vocab_size == spec.num_classes]
  if len(seqs) != 1:
    raise ValueError(f"task {task_name!r}: cannot tell which sequence "
                     f"feature holds the item history (candidates: {seqs})")
  return seqs[0]


def _user_index(run, user: int) -> int:
  test = run.dataset.splits["test"]
  if "user" not in test:
    raise ValueError(f"dataset {run.dataset.name!r} has no 'user' column; "
                     f"recommend with history=[item ids] instead")
  rows = np.flatnonzero(test["user"] == int(user))
  if rows.size != 1:
    known = test["user"]
    raise ValueError(f"user {user} is not a user of dataset "
                     f"{run.dataset.name!r} ({known.size} users, ids "
                     f"{int(known.min())}..{int(known.max())})")
  return int(rows[0])


def user_history(run, user: int, task: str | None = None) -> np.ndarray:
  """A user's interactions in time order (see the module docstring)."""
  spec = ranking_task(run, task)
  test = run.dataset.splits["test"]
  i = _user_index(run, user)
  before = test[spec.exclude][i]
  return np.concatenate([before[before != 0],
                         [test[spec.label][i]]]).astype(np.int64)


def window(history: np.ndarray, length: int) -> np.ndarray:
  """The last `length` items, LEFT-padded with 0 (specs.py's layout)."""
  out = np.zeros(length, np.int64)
  tail = np.asarray(history)[-length:]
  if tail.size:
    out[length - tail.size:] = tail
  return out


def _check_history(run, history, num_items: int) -> np.ndarray:
  h = np.asarray(list(history), dtype=np.int64)
  if h.ndim != 1 or (h.size and (h.min() < 1 or h.max() >= num_items)):
    raise ValueError(f"history must be item ids in 1..{num_items - 1}, "
                     f"oldest first; got {list(history)[:20]}")
  return h


def input_row(run, user: int | None = None, history=None,
              task: str | None = None) -> tuple[dict[str, np.ndarray],
                                                np.ndarray]:
  """(model input row, the history it encodes) for a user and/or history."""
  if user is None and history is None:
    raise ValueError("recommend needs user= (a user id) or history= (item "
                     "ids, oldest first)")
  spec = ranking_task(run, task)
  feature = item_feature(run, spec.name)
  length = run.inputs[feature][1][0]
  test = run.dataset.splits["test"]
  if user is not None:
    i = _user_index(run, user)
    row = {c: test[c][i] for c in run.inputs}
  else:
    row = {c: np.zeros(shape, dtype) for c, (dtype, shape) in
           run.inputs.items()}
  if history is None:
    full = user_history(run, user, spec.name)
    for column, scalar in CONTINUES.items():
      if column in row:
        row[column] = np.concatenate([test[column][i],
                                      [test[scalar][i]]])[-length:]
  else:
    full = _check_history(run, history, spec.num_classes)
    for column in CONTINUES:
      if column in row:
        row[column] = np.zeros_like(row[column])  # unknown
  row[feature] = window(full, length)
  if LENGTH_COLUMN in row:
    row[LENGTH_COLUMN] = np.asarray(min(full.size, length))
  return {c: np.asarray(v, run.inputs[c][0]) for c, v in row.items()}, full


def _top_k_fn(run, task: str, k: int):
  cache = run.__dict__.setdefault("_top_k_fns", {})
  if (task, k) not in cache:
    def fn(params, inputs, seen):
      scores = run.predict_fn(params, inputs)[task]
      return jax.lax.top_k(jnp.where(seen, -jnp.inf, scores), k)
    cache[task, k] = jax.jit(fn)
  return cache[task, k]


def recommend_many(run, requests: Sequence[Mapping[str, Any]], k: int = 10,
                   exclude_seen: bool = True, task: str | None = None,
                   batch_size: int = 256) -> list[dict[str, Any]]:
  """Top-k for each request ({"user": id} and/or {"history": [ids]}), in
  batches of `batch_size` rows (the last one padded, so one compilation).

  Returns one dict per request: "items" (ids, best first) and "scores"
  (the task's predictions for them).
  """
  spec = ranking_task(run, task)
  num_items = spec.num_classes
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}")
  rows, seen = [], []
  for r in requests:
    row, full = input_row(run, r.get("user"), r.get("history"), spec.name)
    mask = np.zeros(num_items, bool)
    mask[0] = True  # padding is never an item
    if exclude_seen:
      mask[full] = True
    if num_items - mask.sum() < k:
      raise ValueError(f"k={k} but request {dict(r)} leaves only "
                       f"{num_items - mask.sum()} items to recommend")
    rows.append(row)
    seen.append(mask)
  fn = _top_k_fn(run, spec.name, int(k))
  size = max(1, min(int(batch_size), len(rows)))
  out = []
  for start in range(0, len(rows), size):
    chunk = list(range(start, min(start + size, len(rows))))
    pad = chunk + [chunk[0]] * (size - len(chunk))
    batch = {c: np.stack([rows[i][c] for i in pad]) for c in run.inputs}
    scores, items = fn(run.params, batch, np.stack([seen[i] for i in pad]))
    scores, items = np.asarray(scores), np.asarray(items)
    for j in range(len(chunk)):
      out.append({"items": items[j].tolist(),
                  "scores": scores[j].astype(float).tolist()})
  return out


def recommend(run, user: int | None = None, history: Iterable[int] | None = None,
              k: int = 10, exclude_seen: bool = True,
              task: str | None = None) -> dict[str, Any]:
  """Top-k items for one user id or raw history (item ids, oldest first):
  {"items": [ids, best first], "scores": [predictions]}."""
  req = {"user": user, "history": None if history is None else list(history)}
  return recommend_many(run, [req], k, exclude_seen, task, batch_size=1)[0]


def item_titles(run) -> list[str] | None:
  """Item titles by id when the dataset has them (MovieLens: read from its
  item file), else None."""
  if "item_titles" in run.dataset.info:
    return list(run.dataset.info["item_titles"])
  if run.config.data.name != "movielens":
    return None
  from mtrec_jax.data import builders, movielens
  variant = movielens.normalize_variant(run.config.data.variant)
  source = builders.resolve_source(run.config.data.get("data_dir", ""),
                                   f"ml-{variant}", "movielens")
  raw = movielens.read_movielens(source, variant,
                                 strict_counts=run.config.data.get("strict_counts", True))
  return list(raw.item_titles)
