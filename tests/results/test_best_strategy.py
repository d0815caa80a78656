"""`ml100k-text-best` trains under "the best strategy of ml100k-strategies"
(issue 18).  That name is a constant of the experiment, fixed before its
runs; these tests tie it to the grid it is read from: the committed export
must agree (a finished row that beats it fails here, and the constant and
the text rows must be revisited), and its runs must be that grid's row with
the item-text keys added, nothing else changed."""
from __future__ import annotations

import math
import pathlib

from experiments.ml100k_text import BEST_ITEMS, BEST_STRATEGY
from mtrec_jax import config as config_lib
from mtrec_jax.experiment import get_experiment
from mtrec_jax.results import records, tables
from mtrec_jax.sweep import Selection

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT_KEYS = ("model.item_repr", "model.text", "optimizer.text_lr_scale")


def test_best_strategy_is_the_best_complete_row_of_the_committed_grid():
  grid = get_experiment("ml100k-strategies")
  results = records.read_results(ROOT / "paper" / "results", grid.name)
  table = tables.build_table(results, rows="strategy",
                             metrics=grid.table_metrics,
                             baseline={"strategy": "mean"})
  complete = [r for r in table.rows
              if r.done == r.total and math.isfinite(r.delta_m)]
  assert len(complete) > 2, "the export has too few complete rows to rank"
  best = max(complete, key=lambda r: r.delta_m)
  assert best.key == (BEST_STRATEGY,), (
      f"the largest Δm% vs mean in the export is {best.key[0]} "
      f"({best.delta_m:+.2f}), not BEST_STRATEGY={BEST_STRATEGY!r} "
      "(experiments/ml100k_text.py): update it, and re-run ml100k-text-best")


def _flat(config) -> dict:
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(config_lib.to_dict(config), "")
  return out


def test_best_rows_are_the_grid_row_plus_the_item_text_keys():
  strategy_run = next(
      r for r in Selection(seeds=(0,), only={"strategy": [BEST_STRATEGY]})
      .runs(get_experiment("ml100k-strategies")))
  runs = Selection(seeds=(0,)).runs(get_experiment("ml100k-text-best"))
  assert [r.grid["item"] for r in runs] == list(BEST_ITEMS)
  grid_row = _flat(strategy_run.config)
  for run in runs:
    row = _flat(run.config)
    differ = {k for k in set(row) ^ set(grid_row) | {
        k for k in set(row) & set(grid_row) if row[k] != grid_row[k]}}
    assert all(k.startswith(TEXT_KEYS) for k in differ), sorted(
        k for k in differ if not k.startswith(TEXT_KEYS))
  ids = _flat(runs[0].config)
  assert ids["strategy.name"] == BEST_STRATEGY
  assert ids["model.item_repr"] == "id"
