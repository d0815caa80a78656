"""Figures on frozen result dicts: files written, deterministic, clear errors.

The frozen runs: strategy {mean, pcgrad} x correlation {1.0, 0.5} x seeds
{0, 1}, two regression tasks; pcgrad's train logs carry gradient cosines,
mean's do not.
"""
from __future__ import annotations

import pytest

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import figures


def _run(strategy, rho, seed, status="done"):
  shift = ((0.01 if strategy == "pcgrad" else 0.0) + (1 - rho) * 0.1
           + seed * 1e-3)
  log = []
  for step in (10, 20, 30):
    rec = {"step": step, "weight/a": 0.5, "weight/b": 0.5,
           "loss/a": 1.0 / step + shift, "loss/b": 2.0 / step + shift,
           "loss/total": 1.5 / step + shift}
    if strategy == "pcgrad":
      rec.update({"weight/a": 0.4 + step / 300, "weight/b": 0.6 - step / 300,
                  "cos/a/b": 0.5 - step / 40})
    log.append(rec)
  evals = [{"step": s, "val/a/mse": 1.0 / s + shift, "val/a/loss": 1.0 / s,
            "val/b/mse": 2.0 / s + shift, "val/b/loss": 2.0 / s}
           for s in (10, 30)]
  return {"grid": {"strategy": strategy, "correlation": rho, "seed": seed},
          "seed": seed, "status": status, "tasks": ["a", "b"],
          "metrics": {"test/a/mse": 0.1 + shift, "test/b/mse": 0.2 - shift,
                      "test/loss": 0.15 + shift},
          "report": {"mean_train_loss": 0.3 + shift},
          "train_log": log, "evals": evals}


RESULTS = [_run(s, r, seed) for s in ("mean", "pcgrad") for r in (1.0, 0.5)
           for seed in (0, 1)]


def _written(paths):
  png, pdf = paths
  assert png.suffix == ".png" and pdf.suffix == ".pdf"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert pdf.read_bytes()[:5] == b"%PDF-"
  assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000


@pytest.mark.parametrize("kind,options", [
    ("weights", {}),
    ("cosines", {"where": {"strategy": "pcgrad"}}),
    ("validation", {}),
    ("validation", {"source": "train_log", "by": ["strategy"],
                    "where": {"correlation": 1.0}}),
    ("pareto", {"by": ["strategy"], "where": {"correlation": 0.5}}),
    ("pareto", {"x": "test/loss", "y": "report/mean_train_loss"}),
    ("metric-vs-axis", {"lines": "strategy"}),
    ("metric-vs-axis", {"x": "strategy", "lines": None, "metric": "a/mse",
                        "where": {"correlation": 1.0}}),
])
def test_each_kind_writes_png_and_pdf(tmp_path, kind, options):
  paths = figures.draw(kind, RESULTS, tmp_path / "sub" / kind, **options)
  assert [p.name for p in paths] == [f"{kind}.png", f"{kind}.pdf"]
  _written(paths)


def test_same_results_give_the_same_bytes(tmp_path):
  a = figures.draw("pareto", RESULTS, tmp_path / "a", by=["strategy"],
                   where={"correlation": 1.0})
  b = figures.draw("pareto", RESULTS, tmp_path / "b", by=["strategy"],
                   where={"correlation": 1.0})
  for x, y in zip(a, b):
    assert x.read_bytes() == y.read_bytes()
  assert b"CreationDate" not in a[1].read_bytes()
  assert b"matplotlib" not in a[0].read_bytes()  # no Software tag


def test_failed_and_missing_runs_are_skipped(tmp_path):
  runs = RESULTS + [
      {**_run("mean", 1.0, 2, status="failed"), "metrics": {}},
      {"grid": {"strategy": "mean", "correlation": 1.0, "seed": 3},
       "seed": 3, "status": "missing", "metrics": {}}]
  _written(figures.draw("metric-vs-axis", runs, tmp_path / "m",
                        lines="strategy"))


@pytest.mark.parametrize("kind,options,error,words", [
    ("weights", {"by": ["strategyy"]}, UnknownNameError,
     ["unknown axis 'strategyy'", "Did you mean 'strategy'"]),
    ("cosines", {"where": {"strategy": "mean"}}, ValueError,
     ["no 'cos/'", "loss-weighting strategies"]),
    ("weights", {"where": {"strategy": "nope"}}, ValueError,
     ["no result matches"]),
    ("pareto", {"x": "test/a/mse", "y": "test/b/mae"}, UnknownNameError,
     ["no run has the metric 'test/b/mae'", "test/b/mse"]),
    ("pareto", {"x": "mse", "y": "test/loss"}, ValueError,
     ["names 2 columns", "'test/a/mse'"]),
    ("metric-vs-axis", {"lines": None}, ValueError,
     ["axis 'strategy' has several values", "where="]),
    ("metric-vs-axis", {"x": "strategy", "lines": "strategy"}, ValueError,
     ["both 'strategy'"]),
    ("validation", {"metric": "auc"}, UnknownNameError,
     ["no eval record has val/a/auc", "val/a/mse"]),
    ("validation", {"source": "train_log", "metric": "mse"}, ValueError,
     ["only task losses"]),
    ("pareto", {"bye": 1}, UnknownNameError,
     ["no option 'bye'", "'by'"]),
])
def test_bad_inputs_name_the_problem(tmp_path, kind, options, error, words):
  with pytest.raises(error) as e:
    figures.draw(kind, RESULTS, tmp_path / "x", **options)
  for w in words:
    assert w in str(e.value)
  assert not list(tmp_path.iterdir())  # nothing written


def test_bad_results(tmp_path):
  with pytest.raises(ValueError, match="no results to plot"):
    figures.draw("weights", [], tmp_path / "x")
  with pytest.raises(UnknownNameError, match="Did you mean 'pareto'"):
    figures.draw("paretto", RESULTS, tmp_path / "x")
  no_evals = [{k: v for k, v in r.items() if k != "evals"} for r in RESULTS]
  with pytest.raises(ValueError, match="no eval history"):
    figures.draw("validation", no_evals, tmp_path / "x")
  one_task = [{**r, "tasks": ["a"], "metrics": {"test/a/mse": 0.1}}
              for r in RESULTS]
  with pytest.raises(ValueError, match="needs two metrics"):
    figures.draw("pareto", one_task, tmp_path / "x")
