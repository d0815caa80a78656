"""Results tables on frozen result dicts, with hand-checked numbers.

The frozen runs: a model x strategy grid, seeds 0-2, two tasks (click AUC,
higher is better; rating RMSE, lower is better).  mmoe/mean lacks seed 2,
mmoe/uncertainty's seed 1 failed and its seed 2 has no rating RMSE.

  row                        click auc (s0, s1, s2)   rating rmse
  shared_bottom/mean  (base) 0.70 0.72 0.74           1.00 1.10 0.90
  shared_bottom/uncertainty  0.73 0.74 0.75           0.90 0.95 1.00
  mmoe/mean                  0.76 0.79  -             1.20 1.00  -
  mmoe/uncertainty           0.75 fail 0.77           0.80 fail null
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import tables

RESULTS = [
    {"grid": {"model": "shared_bottom", "strategy": "mean", "seed": 0},
     "seed": 0, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.61, "test/click/auc": 0.70,
                 "test/rating/loss": 1.0, "test/rating/rmse": 1.00,
                 "val/click/auc": 0.71}},
    {"grid": {"model": "shared_bottom", "strategy": "mean", "seed": 1},
     "seed": 1, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.62, "test/click/auc": 0.72,
                 "test/rating/loss": 1.21, "test/rating/rmse": 1.10,
                 "val/click/auc": 0.73}},
    {"grid": {"model": "shared_bottom", "strategy": "mean", "seed": 2},
     "seed": 2, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.63, "test/click/auc": 0.74,
                 "test/rating/loss": 0.81, "test/rating/rmse": 0.90,
                 "val/click/auc": 0.75}},
    {"grid": {"model": "shared_bottom", "strategy": "uncertainty", "seed": 0},
     "seed": 0, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.62, "test/click/auc": 0.73,
                 "test/rating/loss": 0.81, "test/rating/rmse": 0.90,
                 "val/click/auc": 0.73}},
    {"grid": {"model": "shared_bottom", "strategy": "uncertainty", "seed": 1},
     "seed": 1, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.63, "test/click/auc": 0.74,
                 "test/rating/loss": 0.9025, "test/rating/rmse": 0.95,
                 "val/click/auc": 0.74}},
    {"grid": {"model": "shared_bottom", "strategy": "uncertainty", "seed": 2},
     "seed": 2, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.64, "test/click/auc": 0.75,
                 "test/rating/loss": 1.0, "test/rating/rmse": 1.00,
                 "val/click/auc": 0.76}},
    # mmoe/mean: seed 2 never ran (no result.json).
    {"grid": {"model": "mmoe", "strategy": "mean", "seed": 0},
     "seed": 0, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.64, "test/click/auc": 0.76,
                 "test/rating/loss": 1.44, "test/rating/rmse": 1.20,
                 "val/click/auc": 0.77}},
    {"grid": {"model": "mmoe", "strategy": "mean", "seed": 1},
     "seed": 1, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.66, "test/click/auc": 0.79,
                 "test/rating/loss": 1.0, "test/rating/rmse": 1.00,
                 "val/click/auc": 0.78}},
    # mmoe/uncertainty: seed 1 failed; seed 2 has no rating RMSE (null).
    {"grid": {"model": "mmoe", "strategy": "uncertainty", "seed": 0},
     "seed": 0, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.65, "test/click/auc": 0.75,
                 "test/rating/loss": 0.64, "test/rating/rmse": 0.80,
                 "val/click/auc": 0.75}},
    {"grid": {"model": "mmoe", "strategy": "uncertainty", "seed": 1},
     "seed": 1, "status": "failed", "tasks": ["click", "rating"],
     "error": "RuntimeError: out of memory"},
    {"grid": {"model": "mmoe", "strategy": "uncertainty", "seed": 2},
     "seed": 2, "status": "done", "tasks": ["click", "rating"],
     "metrics": {"test/click/accuracy": 0.66, "test/click/auc": 0.77,
                 "test/rating/loss": None, "test/rating/rmse": None,
                 "val/click/auc": 0.78}},
]


BASE = {"model": "shared_bottom", "strategy": "mean"}
CLICK, RMSE = "test/click/auc", "test/rating/rmse"


def frozen():
  return copy.deepcopy(RESULTS)


@pytest.fixture(scope="module")
def table():
  return tables.build_table(frozen(), baseline=BASE)


# ----------------------------------------------------------------------------
# Means, stds, counts.


def test_default_rows_and_columns(table):
  assert table.axes == ("model", "strategy")
  # Primary metrics by registration order: auc (not accuracy, which sorts
  # first in result.json), rmse (the rating task has no mse here).
  assert table.columns == (CLICK, RMSE)
  assert table.directions == ("max", "min")
  assert [r.key for r in table.rows] == [
      ("shared_bottom", "mean"), ("shared_bottom", "uncertainty"),
      ("mmoe", "mean"), ("mmoe", "uncertainty")]
  assert table.seeds == (0, 1, 2)
  assert table.baseline == 0 and table.rows[0].is_baseline


def test_means_stds_and_counts(table):
  # (mean, sample std, n) by hand; e.g. base rmse: mean (1.0 + 1.1 + 0.9)/3
  # = 1.0, std sqrt((0 + 0.01 + 0.01)/2) = 0.1.
  expected = {
      (("shared_bottom", "mean"), CLICK): (0.72, 0.02, 3),
      (("shared_bottom", "mean"), RMSE): (1.00, 0.10, 3),
      (("shared_bottom", "uncertainty"), CLICK): (0.74, 0.01, 3),
      (("shared_bottom", "uncertainty"), RMSE): (0.95, 0.05, 3),
      (("mmoe", "mean"), CLICK): (0.775, 0.03 / math.sqrt(2), 2),
      (("mmoe", "mean"), RMSE): (1.10, 0.20 / math.sqrt(2), 2),
      (("mmoe", "uncertainty"), CLICK): (0.76, 0.02 / math.sqrt(2), 2),
  }
  for (key, col), (mean, std, n) in expected.items():
    cell = table.cell(key, col)
    assert cell.mean == pytest.approx(mean, abs=1e-12), (key, col)
    assert cell.std == pytest.approx(std, abs=1e-12), (key, col)
    assert cell.n == n
  one = table.cell(("mmoe", "uncertainty"), RMSE)  # seed 2's RMSE is null
  assert (one.mean, one.n, one.by_seed) == (0.80, 1, ((0, 0.80),))
  assert math.isnan(one.std)
  runs = {r.key: (r.done, r.total, r.not_done) for r in table.rows}
  assert runs == {
      ("shared_bottom", "mean"): (3, 3, ()),
      ("shared_bottom", "uncertainty"): (3, 3, ()),
      ("mmoe", "mean"): (2, 3, ((2, "missing"),)),
      ("mmoe", "uncertainty"): (2, 3, ((1, "failed"),)),
  }


def test_delta_m_hand_checked(table):
  # Δm = 100/T Σ_t (−1)^{l_t} (M_t − B_t) / B_t with B = (0.72, 1.00):
  #   sb/unc:  ½[(0.74 − 0.72)/0.72 + (1.00 − 0.95)/1.00] = ½[2.7778% + 5%]
  #          = +3.8889%
  #   mmoe/mean: ½[(0.775 − 0.72)/0.72 − (1.10 − 1.00)/1.00]
  #          = ½[7.6389% − 10%] = −1.1806%
  #   mmoe/unc:  ½[(0.76 − 0.72)/0.72 + (1.00 − 0.80)/1.00]
  #          = ½[5.5556% + 20%] = +12.7778%
  got = [r.delta_m for r in table.rows]
  assert got[0] == 0.0
  assert got[1] == pytest.approx(50 * (0.02 / 0.72 + 0.05), abs=1e-9)
  assert got[1] == pytest.approx(3.888889, abs=1e-6)
  assert got[2] == pytest.approx(-1.180556, abs=1e-6)
  assert got[3] == pytest.approx(12.777778, abs=1e-6)


def test_delta_m_function():
  # One higher-better metric up 10%, one lower-better metric up 10% (worse).
  assert tables.delta_m([1.1, 2.2], [1.0, 2.0], ["max", "min"]) == (
      pytest.approx(0.0, abs=1e-12))
  assert tables.delta_m([0.5], [1.0], ["min"]) == pytest.approx(50.0)
  assert tables.delta_m([0.5], [1.0], ["max"]) == pytest.approx(-50.0)
  assert math.isnan(tables.delta_m([1.0, math.nan], [1.0, 1.0],
                                   ["max", "max"]))
  assert math.isnan(tables.delta_m([1.0], [0.0], ["max"]))  # no base scale


def test_ranks_and_best(table):
  # click auc (max): 0.72 0.74 0.775 0.76 -> ranks 4 3 1 2;
  # rating rmse (min): 1.00 0.95 1.10 0.80 -> ranks 3 2 4 1.
  assert [r.mean_rank for r in table.rows] == [3.5, 2.5, 2.5, 1.5]
  best = [[c.best for c in r.cells] for r in table.rows]
  assert best == [[False, False], [False, False], [True, False],
                  [False, True]]


def test_average_ranks_ties_and_nan():
  assert tables.average_ranks([0.9, 0.8, 0.9, 0.7], "max") == [
      1.5, 3.0, 1.5, 4.0]
  assert tables.average_ranks([0.9, 0.8, 0.9, 0.7], "min") == [
      3.5, 2.0, 3.5, 1.0]
  r = tables.average_ranks([1.0, math.nan, 2.0], "min")
  assert r[0] == 1.0 and math.isnan(r[1]) and r[2] == 2.0


def test_mean_rank_is_nan_when_a_column_is_missing():
  results = frozen()
  for r in results:
    if r["grid"]["strategy"] == "uncertainty" and r["grid"]["model"] == "mmoe":
      r["metrics"] = {**r.get("metrics", {}), RMSE: None}
  t = tables.build_table(results, baseline=BASE)
  row = t.row("mmoe", "uncertainty")
  assert math.isnan(row.mean_rank) and math.isnan(row.delta_m)
  assert t.cell(("mmoe", "uncertainty"), RMSE).n == 0
  # The other rows are ranked among themselves on rmse (1.00 0.95 1.10 ->
  # 2 1 3), and as before on click auc (4 3 1).
  assert [r.mean_rank for r in t.rows[:3]] == [
      (4 + 2) / 2, (3 + 1) / 2, (1 + 3) / 2]


# ----------------------------------------------------------------------------
# Significance.


def test_significance_hand_checked(table):
  # mmoe/mean click auc vs base, seeds 0 and 1: d = (0.06, 0.07),
  # t = 0.065 / (0.007071 / √2) = 13, df = 1 (Cauchy):
  # p = 1 − (2/π) atan(13) = 0.048875 < 0.05.
  cell = table.cell(("mmoe", "mean"), CLICK)
  assert cell.p_value == pytest.approx(1 - 2 / math.pi * math.atan(13),
                                       rel=1e-9)
  assert cell.significant
  # sb/unc click auc: d = (0.03, 0.02, 0.01), t = 2√3, df = 2:
  # p = 1 − t / √(t² + 2) = 0.074180 (not significant).
  cell = table.cell(("shared_bottom", "uncertainty"), CLICK)
  t = 2 * math.sqrt(3)
  assert cell.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
  assert not cell.significant
  # mmoe/unc click auc pairs seeds 0 and 2 only (seed 1 failed): d = (0.05,
  # 0.03), t = 4, p = 1 − (2/π) atan(4) = 0.15596.
  cell = table.cell(("mmoe", "uncertainty"), CLICK)
  assert cell.p_value == pytest.approx(1 - 2 / math.pi * math.atan(4),
                                       rel=1e-9)
  # One paired seed: no test, no mark.
  cell = table.cell(("mmoe", "uncertainty"), RMSE)
  assert math.isnan(cell.p_value) and not cell.significant
  # The baseline is never tested against itself.
  assert all(math.isnan(c.p_value) for c in table.rows[0].cells)
  marks = [[c.significant for c in r.cells] for r in table.rows]
  assert marks == [[False, False], [False, False], [True, False],
                   [False, False]]


def test_p_values_match_scipy_ttest_rel():
  rng = np.random.default_rng(0)
  for n in (2, 3, 4, 5, 7, 10, 20, 50):
    for shift in (0.0, 0.3, 1.0, 3.0):
      a = rng.normal(size=n)
      b = a + shift + rng.normal(scale=0.5, size=n)
      t, p = tables.paired_t_test(a, b)
      ref = scipy.stats.ttest_rel(a, b)
      assert t == pytest.approx(ref.statistic, rel=1e-10)
      assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300), (n, shift)


def test_paired_t_test_edge_cases():
  assert all(map(math.isnan, tables.paired_t_test([1.0], [2.0])))
  assert all(map(math.isnan, tables.paired_t_test([1.0, 2.0], [1.0, 2.0])))
  t, p = tables.paired_t_test([2.0, 3.0], [1.0, 2.0])  # equal differences
  assert t == math.inf and p == 0.0


def test_betainc_matches_scipy():
  for a in (0.05, 0.5, 1.0, 2.5, 10.0, 150.0):
    for b in (0.5, 1.0, 3.0, 40.0):
      for x in (0.0, 1e-8, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert tables._betainc(a, b, x) == pytest.approx(
            scipy.special.betainc(a, b, x), rel=1e-10, abs=1e-14), (a, b, x)
  with pytest.raises(ValueError, match="0 <= x <= 1"):
    tables._betainc(1.0, 1.0, 1.5)


# ----------------------------------------------------------------------------
# Rendering.

EXPECTED_MARKDOWN = """\
| model         | strategy    |          click auc ↑ |    rating rmse ↓ |      Δm% ↑ | mean rank ↓ | runs |
|:--------------|:------------|---------------------:|-----------------:|-----------:|------------:|-----:|
| shared_bottom | mean        |      0.7200 ± 0.0200 |  1.0000 ± 0.1000 |       0.00 |        3.50 |  3/3 |
| shared_bottom | uncertainty |      0.7400 ± 0.0100 |  0.9500 ± 0.0500 |      +3.89 |        2.50 |  3/3 |
| mmoe          | mean        | **0.7750 ± 0.0212**† |  1.1000 ± 0.1414 |      -1.18 |        2.50 |  2/3 |
| mmoe          | uncertainty |      0.7600 ± 0.0141 | **0.8000** (n=1) | **+12.78** |    **1.50** |  2/3 |

Mean ± sample std (ddof=1) over seeds {0, 1, 2}; a single value is one run. runs: done/seeds. Bold: best per column.
(n=k): only k done runs have a finite value.
Δm%: mean over the 2 metric columns of the relative change against the baseline [model=shared_bottom, strategy=mean], sign-flipped where lower is better (Maninis et al., 2019); higher is better.
†: paired two-sided t-test against [model=shared_bottom, strategy=mean] across shared seeds, p < 0.05.
Not done: model=mmoe, strategy=mean: seed 2 missing; model=mmoe, strategy=uncertainty: seed 1 failed.
"""


def test_markdown_exact(table):
  assert tables.to_markdown(table) == EXPECTED_MARKDOWN


def test_output_is_deterministic():
  # Same runs in another order within each row: the same bytes.
  shuffled = frozen()
  shuffled[0:3] = shuffled[2::-1]
  a = tables.to_markdown(tables.build_table(frozen(), baseline=BASE))
  b = tables.to_markdown(tables.build_table(shuffled, baseline=BASE))
  assert a == b
  assert tables.to_latex(tables.build_table(frozen(), baseline=BASE)) == (
      tables.to_latex(tables.build_table(frozen(), baseline=BASE)))


def test_slice_with_where_and_auto_baseline():
  t = tables.build_table(frozen(), rows="strategy", where={"model": "mmoe"},
                         baseline="auto", metrics=("auc",))
  assert [r.key for r in t.rows] == [("mean",), ("uncertainty",)]
  assert t.baseline == 0 and t.columns == (CLICK,)
  # One column: Δm = (0.76 − 0.775) / 0.775 = −1.9355%.
  assert t.rows[1].delta_m == pytest.approx(-100 * 0.015 / 0.775)
  assert tables.to_markdown(t, digits=2).splitlines()[:4] == [
      "| strategy    |     click auc ↑ |    Δm% ↑ | mean rank ↓ | runs |",
      "|:------------|----------------:|---------:|------------:|-----:|",
      "| mean        | **0.78 ± 0.02** | **0.00** |    **1.00** |  2/3 |",
      "| uncertainty |     0.76 ± 0.01 |    -1.94 |        2.00 |  2/3 |",
  ]


def test_latex(table):
  tex = tables.to_latex(table)
  lines = tex.splitlines()
  body = lines[lines.index(r"\begin{tabular}{llrrrrr}"):]
  assert body == [
      r"\begin{tabular}{llrrrrr}",
      r"\toprule",
      r"model & strategy & click auc $\uparrow$ & rating rmse $\downarrow$ & "
      r"$\Delta_m$\% $\uparrow$ & mean rank $\downarrow$ & runs \\",
      r"\midrule",
      r"shared\_bottom & mean & 0.7200 $\pm$ 0.0200 & 1.0000 $\pm$ 0.1000 & "
      r"0.00 & 3.50 & 3/3 \\",
      r"shared\_bottom & uncertainty & 0.7400 $\pm$ 0.0100 & "
      r"0.9500 $\pm$ 0.0500 & +3.89 & 2.50 & 3/3 \\",
      r"mmoe & mean & \textbf{0.7750 $\pm$ 0.0212}$^\dagger$ & "
      r"1.1000 $\pm$ 0.1414 & $-$1.18 & 2.50 & 2/3 \\",
      r"mmoe & uncertainty & 0.7600 $\pm$ 0.0141 & \textbf{0.8000} (n=1) & "
      r"\textbf{+12.78} & \textbf{1.50} & 2/3 \\",
      r"\bottomrule",
      r"\end{tabular}",
  ]
  # The footnotes come first, as comments.
  assert all(line.startswith("% ") for line in lines[:lines.index(body[0])])
  assert any("†: paired two-sided t-test" in line for line in lines)


def test_latex_escaping():
  assert tables._tex_escape("a_b & 5% $x #1 {y} ~ ^ \\") == (
      r"a\_b \& 5\% \$x \#1 \{y\} \textasciitilde{} "
      r"\textasciicircum{} \textbackslash{}")
  results = [{"grid": {"loss_fn": "l1_&_l2", "seed": 0}, "seed": 0,
              "status": "done", "metrics": {"test/t_1/auc": 0.5}}]
  tex = tables.to_latex(tables.build_table(results))
  assert r"l1\_\&\_l2 & 0.5000 & 1.00 & 1/1 \\" in tex
  assert r"loss\_fn & t\_1 auc $\uparrow$" in tex
  md = tables.to_markdown(tables.build_table(
      [{**results[0], "grid": {"loss_fn": "a|b", "seed": 0}}]))
  assert r"| a\|b " in md


# ----------------------------------------------------------------------------
# Columns, directions, display details.


def test_metric_names_resolve():
  t = tables.build_table(frozen(), metrics=("auc", "rating/rmse",
                                           "val/click/auc", "test/rating/loss"))
  assert t.columns == (CLICK, RMSE, "val/click/auc", "test/rating/loss")
  assert t.directions == ("max", "min", "max", "min")
  assert tables.column_label("val/click/auc") == "val click auc"
  assert tables.column_label("report/noise_var") == "noise_var"


def test_report_columns_need_a_direction():
  results = frozen()
  for i, r in enumerate(results):
    r["report"] = {"sigma_error": 0.1 * (i + 1)}
  with pytest.raises(ValueError, match="directions=.*report/sigma_error"):
    tables.build_table(results, metrics=("report/sigma_error",))
  t = tables.build_table(results, metrics=("report/sigma_error",),
                         directions={"report/sigma_error": "min"})
  # Done runs 1-3 of shared_bottom/mean: 0.1, 0.2, 0.3.
  assert t.cell(("shared_bottom", "mean"), "report/sigma_error").mean == (
      pytest.approx(0.2))
  assert t.rows[0].cells[0].best  # the smallest error


def test_equal_looking_values_are_both_bold():
  def run(model, seed, auc):
    return {"grid": {"model": model, "seed": seed}, "seed": seed,
            "status": "done", "metrics": {"test/a/auc": auc}}
  # 0.94651 and 0.94649 print alike at 4 digits: both bold (the exact best
  # is still only one cell in the Table).
  t = tables.build_table([run("x", 0, 0.94651), run("y", 0, 0.94649),
                          run("z", 0, 0.9)])
  assert [r.cells[0].best for r in t.rows] == [True, False, False]
  md = tables.to_markdown(t)
  assert md.count("**0.9465**") == 2 and "**0.9000**" not in md


def test_no_negative_zero():
  assert tables._signed(-0.001) == "0.00"
  assert tables._signed(0.004) == "0.00"
  assert tables._signed(1.234) == "+1.23"
  assert tables._num(-0.00001, 4) == "0.0000"


def test_mean_std_is_order_free():
  values = [0.1, 0.7, 1e-3, 0.3, 0.2, 1e3]
  assert tables.mean_std(values) == tables.mean_std(values[::-1])
  mean, std = tables.mean_std(values)
  assert mean == pytest.approx(np.mean(values), rel=1e-15)
  assert std == pytest.approx(np.std(values, ddof=1), rel=1e-14)
  assert all(map(math.isnan, tables.mean_std([])))
  assert tables.mean_std([2.0])[0] == 2.0 and math.isnan(
      tables.mean_std([2.0])[1])


def test_table_lookup_errors(table):
  with pytest.raises(UnknownNameError, match="'test/click/auc'"):
    table.cell(("mmoe", "mean"), "test/click/acu")
  with pytest.raises(UnknownNameError, match="rows: model=shared_bottom"):
    table.row("mmoe", "gradnorm")


def test_experiment_without_axes():
  results = [{"grid": {"seed": s}, "seed": s, "status": "done",
              "metrics": {"test/a/mse": 1.0 + s}} for s in range(3)]
  t = tables.build_table(results)
  assert t.axes == () and [r.key for r in t.rows] == [()]
  assert t.rows[0].cells[0].mean == 2.0
  assert tables.to_markdown(t).splitlines()[2] == (
      "| all        | 2.0000 ± 1.0000 |        1.00 |  3/3 |")


def test_expected_seeds_show_missing_runs():
  t = tables.build_table(frozen(), seeds=(0, 1, 2, 3))
  assert [f"{r.done}/{r.total}" for r in t.rows] == ["3/4", "3/4", "2/4",
                                                     "2/4"]
  assert t.rows[0].not_done == ((3, "missing"),)
  t = tables.build_table(frozen(), seeds=(0,))  # a filter, too
  assert [f"{r.done}/{r.total}" for r in t.rows] == ["1/1"] * 4


# ----------------------------------------------------------------------------
# Errors.


def test_unknown_metric_names_close_ones():
  with pytest.raises(UnknownNameError, match="'test/click/auc'"):
    tables.build_table(frozen(), metrics=("test/click/acu",))
  with pytest.raises(UnknownNameError, match="no run has the metric 'ndcg@10'"):
    tables.build_table(frozen(), metrics=("ndcg@10",))


def test_unknown_axis_names_close_ones():
  with pytest.raises(UnknownNameError, match="Did you mean 'strategy'"):
    tables.build_table(frozen(), rows="strategi")
  with pytest.raises(UnknownNameError, match="Axes of these runs: model, "
                                             "strategy"):
    tables.build_table(frozen(), where={"dataset": "census"})


def test_baseline_not_found_lists_rows():
  with pytest.raises(ValueError, match=(
      r"no row matches baseline \{'strategy': 'gradnorm'\}. Rows: "
      r"model=shared_bottom, strategy=mean; model=shared_bottom, "
      r"strategy=uncertainty")):
    tables.build_table(frozen(), baseline={"strategy": "gradnorm"})
  with pytest.raises(ValueError, match="matches 2 rows"):
    tables.build_table(frozen(), baseline={"strategy": "mean"})
  with pytest.raises(ValueError, match="2 rows have the value 'mean'"):
    tables.build_table(frozen(), baseline="auto")
  with pytest.raises(ValueError, match="not a row axis"):
    tables.build_table(frozen(), rows="strategy", where={"model": "mmoe"},
                       baseline={"model": "mmoe"})


def test_pooling_an_axis_that_varies_is_an_error():
  with pytest.raises(ValueError, match="differ in \\['model'\\]: add 'model' "
                     "to rows= or pick one value with where="):
    tables.build_table(frozen(), rows="strategy")
  with pytest.raises(ValueError, match="the same run is listed twice"):
    tables.build_table(frozen() + frozen()[:1])


def test_no_done_runs():
  results = [r for r in frozen() if r["status"] == "failed"]
  results.append({**results[0], "status": "diverged", "seed": 2,
                  "grid": {**results[0]["grid"], "seed": 2}})
  with pytest.raises(ValueError, match=r"no run is done.*1 diverged, 1 failed"):
    tables.build_table(results)
  with pytest.raises(ValueError, match="no results"):
    tables.build_table([])
  with pytest.raises(ValueError, match="no result matches"):
    tables.build_table(frozen(), where={"model": "ple"})


def test_summary_takes_the_auto_baseline_only_when_it_is_one_row():
  # Two rows have strategy 'mean': 'auto' refuses, the summary has no Δm%.
  out = tables.summary(RESULTS)
  assert out == tables.to_markdown(tables.build_table(RESULTS))
  assert "Δm%" not in out
  one = [r for r in RESULTS if r["grid"]["model"] == "shared_bottom"]
  out = tables.summary(one)
  assert out == tables.to_markdown(tables.build_table(one, baseline="auto"))
  assert "Δm%" in out and "[model=shared_bottom, strategy=mean]" in out
  failed = [{**r, "status": "failed"} for r in one]
  assert tables.summary(failed).startswith(
      "(no table: no run is done, so there is nothing to average "
      "(statuses: 6 failed)")


def test_check_where_names_the_closest_value():
  tables.check_where(RESULTS, {"model": ["mmoe", "shared_bottom"]})
  tables.check_where(RESULTS, {"modl": ["x"]})  # build_table names the axis
  with pytest.raises(UnknownNameError, match="--where strategy=uncertanty: "
                     "no run has strategy 'uncertanty'. Did you mean "
                     "'uncertainty'"):
    tables.check_where(RESULTS, {"strategy": ["mean", "uncertanty"]},
                       "--where")


def test_parse_baseline():
  assert tables.parse_baseline("auto") == "auto"
  assert tables.parse_baseline("none") is None
  assert tables.parse_baseline("model=mmoe, strategy=mean") == {
      "model": "mmoe", "strategy": "mean"}
  with pytest.raises(ValueError, match="write auto, none or axis=value"):
    tables.parse_baseline("mmoe")
