"""Two Δm% baselines (equal weights and single-task) and the measured
s/step column, on frozen result dicts checked against numpy written
another way (per-seed arrays, scipy's paired t-test).

The frozen runs: strategy {single_task, mean, pcgrad} x seeds 0-2, tasks
next (ndcg, higher is better) and rating (rmse, lower is better);
single_task has the next-item metric only, like a model trained for next
item alone.  mean trained its seeds as one population, pcgrad one at a
time.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from mtrec_jax.results import tables

NDCG, RMSE = "test/next/ndcg@10", "test/rating/rmse"
VALUES = {  # strategy -> (ndcg per seed, rmse per seed or None)
    "single_task": ([0.080, 0.082, 0.081], None),
    "mean": ([0.070, 0.071, 0.069], [1.00, 1.02, 0.98]),
    "pcgrad": ([0.075, 0.078, 0.076], [0.95, 0.97, 0.99]),
}
TIMES = {"single_task": (10.0, 2.0, 101), "mean": (40.0, 5.0, 101),
         "pcgrad": (30.0, 4.0, 101)}  # wall, first step, steps


def _results():
  out = []
  for strategy, (ndcg, rmse) in VALUES.items():
    for seed in range(3):
      metrics = {NDCG: ndcg[seed]}
      if rmse is not None:
        metrics[RMSE] = rmse[seed]
      wall, first, steps = TIMES[strategy]
      r = {"grid": {"strategy": strategy, "seed": seed}, "seed": seed,
           "status": "done", "metrics": metrics,
           "wall_time_s": wall + seed, "compile_time_s": first,
           "steps": steps}
      if strategy == "mean":  # one population program: one shared time
        r["wall_time_s"] = wall
        r["population"] = {"size": 3, "index": seed, "members": [
            f"strategy=mean,seed={s}" for s in range(3)]}
      out.append(r)
  return out


BASELINES = ({"strategy": "mean"}, {"strategy": "single_task"})


@pytest.fixture(scope="module")
def table():
  return tables.build_table(_results(), metrics=(NDCG, RMSE),
                            baseline=BASELINES, cost=True)


def _dm(row, base, signs):
  """Δm% with numpy: mean over the columns of signs * (M - B) / B."""
  row, base, signs = map(np.asarray, (row, base, signs))
  return float(100 * np.mean(signs * (row - base) / base))


def test_two_delta_m_columns_match_numpy(table):
  means = {s: (np.mean(n), None if r is None else np.mean(r))
           for s, (n, r) in VALUES.items()}
  by = {r.key[0]: r for r in table.rows}
  assert table.baseline == 1 and table.more_baselines == (0,)
  assert table.delta_columns == ((0, 1), (0,))  # single_task: ndcg only
  for s in ("mean", "pcgrad"):
    vs_mean = _dm(means[s], means["mean"], (1, -1))
    vs_single = _dm(means[s][:1], means["single_task"][:1], (1,))
    assert by[s].delta_m == pytest.approx(vs_mean, abs=1e-9)
    assert by[s].more_delta_m == (pytest.approx(vs_single, abs=1e-9),)
  # single_task has no rating: no Δm% against mean, 0 against itself.
  assert math.isnan(by["single_task"].delta_m)
  assert by["single_task"].more_delta_m == (0.0,)
  assert by["mean"].delta_m == 0.0
  # by hand: pcgrad vs mean = ½[(0.229/3 − 0.070)/0.070 + (1.00 − 0.97)/1]
  assert by["pcgrad"].delta_m == pytest.approx(
      50 * ((0.229 / 3 - 0.07) / 0.07 + 0.03))
  assert by["pcgrad"].more_delta_m[0] == pytest.approx(
      100 * (0.229 / 3 - 0.081) / 0.081)


def test_marks_follow_scipy_per_baseline(table):
  by = {r.key[0]: r for r in table.rows}
  for j, col in enumerate((NDCG, RMSE)):
    for s in ("mean", "pcgrad", "single_task"):
      cell = by[s].cells[j]
      for k, base in enumerate(("mean", "single_task")):
        mine = VALUES[s][j]
        theirs = VALUES[base][j]
        if s == base or mine is None or theirs is None:
          expected = False
        else:
          expected = scipy.stats.ttest_rel(mine, theirs).pvalue < 0.05
        got = cell.significant if k == 0 else cell.more_significant[0]
        assert got == expected, (s, col, base)
  # pcgrad's ndcg: above mean, below single_task, both significant.
  assert by["pcgrad"].cells[0].significant
  assert by["pcgrad"].cells[0].more_significant == (True,)


def test_markdown_has_both_columns_marks_and_notes(table):
  md = tables.to_markdown(table)
  head = md.splitlines()[0]
  assert "Δm% vs mean ↑" in head and "Δm% vs single_task ↑" in head
  assert "s/step" in head
  pcgrad = next(l for l in md.splitlines() if l.startswith("| pcgrad"))
  assert "0.0763 ± 0.0015†‡" in pcgrad
  assert "Δm% vs single_task: mean over the 1 metric column it has " \
         "(next ndcg@10)" in md
  assert "†: against [strategy=mean]; ‡: against [strategy=single_task]" in md
  one = tables.to_markdown(tables.build_table(
      _results(), metrics=(NDCG, RMSE), baseline={"strategy": "mean"}))
  assert " Δm% ↑ " in one.splitlines()[0]
  assert "vs" not in one.splitlines()[0] and "‡" not in one


def test_cost_per_program(table):
  by = {r.key[0]: r for r in table.rows}
  # pcgrad: three programs, (30 + seed − 4) / 100 s each.
  pc = [(30.0 + s - 4.0) / 100 for s in range(3)]
  assert by["pcgrad"].cost.mean == pytest.approx(np.mean(pc))
  assert by["pcgrad"].cost.std == pytest.approx(np.std(pc, ddof=1))
  assert (by["pcgrad"].cost.programs, by["pcgrad"].cost.members) == (3, 1)
  # mean: one population program, its time counted once, not divided.
  c = by["mean"].cost
  assert (c.mean, c.programs, c.members) == (pytest.approx(0.35), 1, 3)
  assert math.isnan(c.std)
  md = tables.to_markdown(table)
  row = next(l for l in md.splitlines() if l.startswith("| mean "))
  assert "0.350 (pop. 3)" in row
  assert "0.270 ± 0.010" in md


def test_step_seconds_edge_cases():
  good = {"status": "done", "wall_time_s": 12.0, "compile_time_s": 2.0,
          "steps": 11}
  assert tables.step_seconds(good) == 1.0
  assert tables.step_seconds({**good, "attempt": 1}) == 1.0
  for bad in ({**good, "status": "failed"}, {**good, "steps": 1},
              {k: v for k, v in good.items() if k != "wall_time_s"},
              {**good, "compile_time_s": None},
              {**good, "wall_time_s": float("nan")},
              {**good, "attempt": 2}):  # may have resumed: a part only
    assert math.isnan(tables.step_seconds(bad))
  assert tables.row_cost([{**good, "status": "failed"}]) is None


def test_baseline_list_errors():
  with pytest.raises(ValueError, match="list of 1 to 3"):
    tables.build_table(_results(), baseline=[{"strategy": "mean"}] * 4)
  with pytest.raises(ValueError, match="same row twice"):
    tables.build_table(_results(), metrics=(NDCG,),
                       baseline=[{"strategy": "mean"}, {"strategy": "mean"}])
  with pytest.raises(ValueError, match="list of 1 to 3"):
    tables.build_table(_results(), baseline=["auto", {"strategy": "mean"}])
