"""`benchmarks.strategies_ml100k`: its rows are the grid's, its errors name
the fix, and its summary renders (the timing itself needs ML-100K and
minutes of compiling, so it runs by hand).
"""
from __future__ import annotations

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` is not an installed package
  sys.path.insert(0, str(ROOT))

from benchmarks import strategies_ml100k as bench  # noqa: E402
from experiments.ml100k_mtl import TASK_SETS  # noqa: E402
from experiments.ml100k_strategies import STRATEGY_ROWS  # noqa: E402


def test_rows_are_the_grid_rows_in_grid_order():
  configs = bench.row_configs(None)
  assert list(configs) == list(STRATEGY_ROWS)
  # Seed 0's config as the grid runs it: the row's strategy and mode.
  assert configs["gradnorm"].strategy.name == "gradnorm"
  assert configs["gradnorm"].strategy.mode == "params"
  assert (list(configs["single_task"].aux.tasks)
          == list(TASK_SETS["next_item"]["aux.tasks"]))
  assert all(c.seed == 0 for c in configs.values())


def test_a_subset_keeps_grid_order_and_an_unknown_row_is_named():
  assert list(bench.row_configs(["pcgrad", "mean"])) == ["mean", "pcgrad"]
  with pytest.raises(SystemExit, match=r"no such row \['pcgard'\].*pcgrad"):
    bench.row_configs(["mean", "pcgard"])


def test_summary_lists_every_row_with_its_ratio():
  payload = {"device": "cpu:cpu x1", "rounds": 3, "iters": 2,
             "note": "two jobs ran", "other_load": 0.5,
             "loadavg_before": [1.0], "loadavg_after": [1.5], "cpu_count": 2,
             "rows": [{"strategy": "mean", "mode": "loss", "step_ms": 180.0,
                       "relative": 1.0, "compile_s": 9.4, "gflop": 1.52},
                      {"strategy": "modo", "mode": "params", "step_ms": 780.0,
                       "relative": 4.33, "compile_s": 21.9, "gflop": 11.2}]}
  text = bench.summary(payload)
  assert "| mean | loss | 180 | 1.00 | 9.4 | 1.52 |" in text
  assert "| modo | params | 780 | 4.33 |" in text
  assert "two jobs ran" in text
