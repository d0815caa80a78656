"""`mtrec paper`: generated regions, --check, --export and --from.

A temporary paper folder (paper.md with prose and markers, paper_spec.py,
results/quickstart.jsonl) holds frozen quickstart-like records: two models x
seeds 0-1, two regression tasks. Export tests write fabricated runs of
quickstart's current grid into a store (no training). The last test checks
the committed paper/ of the repository itself.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib

import pytest

from mtrec_jax import cli
from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import paper
from mtrec_jax.results.store import Store

ROOT = pathlib.Path(__file__).resolve().parents[2]

SPEC = '''
from mtrec_jax.results.paper import Figure, Table

BLOCKS = [
    Table("qs-mse", "quickstart", baseline={"model": "shared_bottom"}),
    Table("qs-mae", "quickstart", metrics=("mae",), baseline=None,
          caption="MAE per task."),
    Figure("qs-val", "quickstart", "validation", caption="Curves."),
]
'''

PAPER = """# A paper

Prose before, with a <!-- plain comment --> and **markdown**.

<!-- mtrec:table qs-mse -->
stale text
<!-- mtrec:end -->

Prose between.
  Indented prose.

<!-- mtrec:table qs-mae -->
<!-- mtrec:end -->
<!-- mtrec:figure qs-val -->
old figure text
<!-- mtrec:end -->
Prose after, no final newline."""

PROV = {"git": {"commit": "0123456789abcdef", "dirty": False},
        "packages": {"jax": "0.0.1"},
        "devices": {"platform": "cpu", "kind": "cpu", "count": 1,
                    "process_count": 1}}


def _record(model, seed, offset=0.0):
  x = (0.01 if model == "mmoe" else 0.0) + seed * 0.002 + offset
  return {"experiment": "quickstart", "run_name": f"model={model},seed={seed}",
          "grid": {"model": model, "seed": seed}, "seed": seed,
          "config_hash": "f" * 16, "status": "done", "attempt": 1,
          "tasks": ["task1", "task2"], **PROV,
          "metrics": {"test/task1/mse": 0.10 + x, "test/task2/mse": 0.20 - x,
                      "test/task1/mae": 0.30 + x, "test/task2/mae": 0.40 + x},
          "train_log": [{"step": s, "weight/task1": 0.5, "weight/task2": 0.5,
                         "loss/task1": 1 / s} for s in (10, 20)],
          "evals": [{"step": s, "val/task1/mse": 1 / s + x,
                     "val/task2/mse": 2 / s + x} for s in (10, 20)]}


RECORDS = [_record(m, s) for m in ("shared_bottom", "mmoe") for s in (0, 1)]


def _main(*argv) -> tuple[int, str]:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    code = cli.main(list(map(str, argv)))
  return code, buf.getvalue()


def _paper_dir(root, records=RECORDS, spec=SPEC, text=PAPER):
  d = root / "paper"
  (d / "results").mkdir(parents=True)
  (d / "paper_spec.py").write_text(spec)
  (d / "paper.md").write_text(text)
  (d / "results" / "quickstart.jsonl").write_text(
      paper.dumps_records(records))
  return d


def _outside(text):
  """The text outside the generated regions (prose and markers)."""
  lines = text.splitlines(keepends=True)
  keep, pos = [], 0
  for r in paper.parse_regions(text):
    keep += lines[pos:r.start]
    pos = r.end
  return "".join(keep + lines[pos:])


# ------------------------------------------------------------------ regions


def test_write_rewrites_only_the_regions(tmp_path):
  d = _paper_dir(tmp_path)
  gen, figs = paper.write(d)
  new = (d / "paper.md").read_text()
  assert _outside(new) == _outside(PAPER)
  assert new.endswith("Prose after, no final newline.")
  assert "stale text" not in new and "old figure text" not in new
  assert gen.changed == ["qs-mse", "qs-mae", "qs-val"]
  regions = {r.id: paper.region_text(new, r) for r in paper.parse_regions(new)}
  mse = regions["qs-mse"]
  assert "| model " in mse and "task1 mse ↓" in mse and "Δm% ↑" in mse
  assert "shared_bottom" in mse and "2/2" in mse
  assert "Source: `results/quickstart.jsonl`, 4 runs (4 done)" in mse
  assert "code at commit 0123456; jax 0.0.1; on cpu." in mse
  assert regions["qs-mae"].startswith("*MAE per task.*\n\n| model")
  assert "Δm%" not in regions["qs-mae"]
  assert regions["qs-val"].startswith(
      "![Curves.](figures/qs-val.png)\n\nCurves. ([PDF](figures/qs-val.pdf))")
  assert sorted(f.name for f in figs) == ["qs-val.pdf", "qs-val.png"]
  assert sorted(p.name for p in (d / "figures").iterdir()) == [
      "qs-val.pdf", "qs-val.png"]  # no temporary files left
  # Again: nothing changes, the file is not rewritten.
  mtime = os.stat(d / "paper.md").st_mtime_ns
  gen, _ = paper.write(d)
  assert gen.changed == [] and (d / "paper.md").read_text() == new
  assert os.stat(d / "paper.md").st_mtime_ns == mtime


def test_table_region_is_what_mtrec_table_prints(tmp_path):
  d = _paper_dir(tmp_path)
  paper.write(d)
  text = (d / "paper.md").read_text()
  region = next(paper.region_text(text, r) for r in paper.parse_regions(text)
                if r.id == "qs-mse")
  code, out = _main("table", "quickstart", "--from", d / "results",
                    "--baseline", "model=shared_bottom")
  assert code == 0 and out in region


@pytest.mark.parametrize("text,words", [
    ("<!-- mtrec:end -->\n", ["without a start marker"]),
    ("<!-- mtrec:table a -->\nx\n", ["'a' has no <!-- mtrec:end -->"]),
    ("<!-- mtrec:table a -->\n<!-- mtrec:table b -->\n<!-- mtrec:end -->\n",
     ["'b' starts before region 'a'"]),
    ("<!-- mtrec:table a -->\n<!-- mtrec:end -->\n"
     "<!-- mtrec:table a -->\n<!-- mtrec:end -->\n", ["appears 2 times"]),
    ("<!-- mtrec:tabel a -->\n", ["cannot read the marker"]),
])
def test_bad_markers(text, words):
  with pytest.raises(ValueError) as e:
    paper.parse_regions(text, "p.md")
  for w in words:
    assert w in str(e.value)
  assert str(e.value).startswith("p.md:")


def test_regions_and_blocks_must_pair_up(tmp_path):
  d = _paper_dir(tmp_path, text=PAPER.replace("qs-mae -->", "qs-mea -->"))
  code, out = _main("paper", "--paper", d)
  assert code == 2
  assert "region 'qs-mea' has no block" in out and "'qs-mae'" in out
  d = _paper_dir(tmp_path / "2", text=PAPER.replace(
      "<!-- mtrec:table qs-mae -->\n<!-- mtrec:end -->\n", ""))
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 2 and "no region for block 'qs-mae'" in out
  assert "<!-- mtrec:table qs-mae -->" in out
  d = _paper_dir(tmp_path / "3", text=PAPER.replace(
      "mtrec:figure qs-val", "mtrec:table qs-val"))
  code, out = _main("paper", "--paper", d)
  assert code == 2 and "write <!-- mtrec:figure qs-val -->" in out


def test_spec_errors(tmp_path):
  with pytest.raises(ValueError, match="must be lowercase"):
    paper.Table("Bad Id", "quickstart")
  with pytest.raises(UnknownNameError, match="Did you mean 'pareto'"):
    paper.Figure("f", "quickstart", "paretto")
  with pytest.raises(UnknownNameError, match="no option 'metrc'"):
    paper.Figure("f", "quickstart", "validation", {"metrc": "mse"})
  d = _paper_dir(tmp_path, spec=SPEC.replace('"qs-mae"', '"qs-mse"'))
  code, out = _main("paper", "--paper", d)
  assert code == 2 and "block id 'qs-mse' is used twice" in out


def test_nothing_is_written_when_a_block_fails(tmp_path):
  spec = SPEC.replace("]\n", '    Figure("qs-bad", "quickstart", "pareto", '
                             '{"x": "test/task1/nope"}),\n]\n')
  text = PAPER + "\n<!-- mtrec:figure qs-bad -->\n<!-- mtrec:end -->\n"
  d = _paper_dir(tmp_path, spec=spec, text=text)
  code, out = _main("paper", "--paper", d)
  assert code == 2
  assert "figure 'qs-bad' (quickstart)" in out and "test/task1/nope" in out
  assert (d / "paper.md").read_text() == text  # untouched
  assert list((d / "figures").iterdir()) == []  # qs-val was drawn, not kept
  # A table that cannot be built stops everything too.
  d = _paper_dir(tmp_path / "2", spec=SPEC.replace('("mae",)', '("maee",)'))
  code, out = _main("paper", "--paper", d)
  assert code == 2 and "table 'qs-mae' (quickstart)" in out
  assert "no run has the metric 'maee'" in out
  assert (d / "paper.md").read_text() == PAPER
  assert not (d / "figures").exists()


def test_missing_results_name_the_experiment_and_the_fix(tmp_path):
  spec = SPEC.replace('Figure("qs-val", "quickstart"',
                      'Figure("qs-val", "census-mtl"')
  d = _paper_dir(tmp_path, spec=spec)
  code, out = _main("paper", "--paper", d)
  assert code == 2
  for w in ("no results of experiment 'census-mtl'", "mtrec run census-mtl",
            "mtrec paper --export"):
    assert w in out
  assert (d / "paper.md").read_text() == PAPER


# -------------------------------------------------------------------- check


def test_check_fails_on_a_tampered_table_and_passes_regenerated(tmp_path):
  d = _paper_dir(tmp_path)
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 1 and "3 of 3 generated regions" in out
  assert _main("paper", "--paper", d)[0] == 0
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 0 and "all 3 generated regions match" in out
  good = (d / "paper.md").read_text()
  assert "0.1990" in good  # shared_bottom's task2 mse, seeds 0-1
  (d / "paper.md").write_text(good.replace("0.1990", "0.1991", 1))
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 1
  assert "block 'qs-mse' differs" in out and "block 'qs-mae'" not in out
  assert "differ: qs-mse;" in out
  assert "-| shared_bottom" in out and "+| shared_bottom" in out
  assert "1 of 3 generated regions" in out and "run `mtrec paper`" in out
  # --check writes nothing; regenerating restores the committed bytes.
  assert "0.1991" in (d / "paper.md").read_text()
  assert _main("paper", "--paper", d)[0] == 0
  assert (d / "paper.md").read_text() == good
  assert _main("paper", "--check", "--paper", d)[0] == 0


def test_from_reads_a_frozen_export(tmp_path):
  d = _paper_dir(tmp_path)
  frozen = tmp_path / "frozen"
  frozen.mkdir()
  other = [_record(m, s, offset=0.05) for m in ("shared_bottom", "mmoe")
           for s in (0, 1)]
  (frozen / "quickstart.jsonl").write_text(paper.dumps_records(other))
  assert _main("paper", "--paper", d, "--from", frozen)[0] == 0
  assert "0.1510" in (d / "paper.md").read_text()
  assert _main("paper", "--check", "--paper", d, "--from", frozen)[0] == 0
  assert _main("paper", "--check", "--paper", d)[0] == 1  # results/ differ
  (frozen / "quickstart.jsonl").write_text("{not json\n")
  code, out = _main("paper", "--check", "--paper", d, "--from", frozen)
  assert code == 2 and "quickstart.jsonl:1: not JSON" in out


# ------------------------------------------------------------------- export


def _store_runs(path, which):
  """Fabricated finished runs of quickstart's current grid, in `path`."""
  exp = experiment_lib.get_experiment("quickstart")
  with Store(path) as store:
    for run in exp.runs():
      model = run.grid["model"]
      if model not in which:
        continue
      h = config_lib.config_hash(run.config)
      rid = store.claim("quickstart", run.name, run.grid,
                        config_lib.to_dict(run.config), h, 0, PROV)
      rec = _record(model, 0)
      res = {**{k: rec[k] for k in ("grid", "seed", "tasks", "metrics",
                                    "train_log")}, **PROV,
             "status": "done", "config_hash": h, "wall_time_s": 1.5,
             "compile_time_s": 0.5, "params_dir": "/tmp/x/params",
             "experiment": "quickstart"}
      store.finish(rid, res, evals=rec["evals"])


def test_export_is_deterministic_and_keeps_only_what_is_needed(tmp_path):
  store = tmp_path / "s.db"
  _store_runs(store, ["shared_bottom"])
  d = _paper_dir(tmp_path)
  out = d / "results" / "quickstart.jsonl"
  code, msg = _main("paper", "--paper", d, "--export", "--store", store)
  assert code == 0, msg
  assert f"exported {out}" in msg
  first = out.read_bytes()
  assert _main("paper", "--paper", d, "--export", "--store", store)[0] == 0
  assert out.read_bytes() == first
  assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's mode
  records = [json.loads(l) for l in first.decode().splitlines()]
  assert [r["run_name"] for r in records] == [
      "model=shared_bottom,seed=0", "model=mmoe,seed=0"]  # grid order
  done, missing = records
  assert missing["status"] == "missing" and missing["metrics"] == {}
  assert done["status"] == "done" and done["git"] == PROV["git"]
  assert done["evals"][0]["val/task1/mse"] == pytest.approx(0.1)
  assert done["config"]["model"]["name"] == "shared_bottom"
  # No figure of the spec draws the train log: the export leaves it out ...
  assert done["train_log"] == [] and missing["train_log"] == []
  # ... and keeps it for an experiment with such a figure.
  (d / "paper_spec.py").write_text(SPEC.replace(
      '"validation", caption', '"weights", caption'))
  code, msg = _main("paper", "--paper", d, "--export", "--store", store)
  assert code == 0, msg
  done = json.loads(out.read_text().splitlines()[0])
  assert [r["step"] for r in done["train_log"]] == [10, 20]
  (d / "paper_spec.py").write_text(SPEC)
  assert _main("paper", "--paper", d, "--export", "--store", store)[0] == 0
  for key in ("params_dir", "run_id", "started_at", "ended_at",
              "superseded"):  # clock times, ids and paths: left out
    assert key not in done
  # The durations the run measured stay (a table's s/step column).
  assert (done["wall_time_s"], done["compile_time_s"]) == (1.5, 0.5)
  # The export regenerated the paper from itself: --check passes, and a
  # missing seed shows in the table.
  code, msg = _main("paper", "--check", "--paper", d)
  assert code == 0, msg
  assert "| mmoe " in (d / "paper.md").read_text()
  assert "model=mmoe: seed 0 missing" in (d / "paper.md").read_text()


def test_store_import_restores_an_export_the_sweep_then_skips(tmp_path):
  """`mtrec store import`: an export's finished runs stored again (a store
  lost with its machine continues from the repository's export); exporting
  the restored store gives the same bytes; importing twice adds nothing;
  a missing run stays to be run."""
  store = tmp_path / "s.db"
  _store_runs(store, ["shared_bottom"])
  d = _paper_dir(tmp_path)
  out = d / "results" / "quickstart.jsonl"
  assert _main("paper", "--paper", d, "--export", "--store", store)[0] == 0
  first = out.read_bytes()
  fresh = tmp_path / "fresh.db"
  code, msg = _main("store", "import", out, "--store", fresh)
  assert code == 0, msg
  assert "1 runs imported, 0 already there, 1 not finished" in msg
  code, msg = _main("store", "import", out, "--store", fresh)
  assert code == 0 and "0 runs imported, 1 already there" in msg, msg
  assert _main("paper", "--paper", d, "--export", "--store", fresh)[0] == 0
  assert out.read_bytes() == first  # metrics, provenance and evals intact
  # An export from before a config key existed (optimizer.b1 here) carries
  # the hash of then: the import re-keys it as the store's migration does.
  old = [json.loads(l) for l in first.decode().splitlines()]
  del old[0]["config"]["optimizer"]["b1"]
  old[0]["config_hash"] = "0" * 16
  older = tmp_path / "older.jsonl"
  older.write_text(paper.dumps_records(old))
  code, msg = _main("store", "import", older, "--store", tmp_path / "o.db")
  assert code == 0 and "1 runs imported" in msg and "1 re-keyed" in msg, msg
  with Store(tmp_path / "o.db") as s:
    (row,) = s.results("quickstart")
    assert row["config_hash"] == json.loads(first.splitlines()[0])[
        "config_hash"]
  exp = experiment_lib.get_experiment("quickstart")
  with Store(fresh) as s:
    (row,) = s.results("quickstart")
    assert s.eval_history(row["run_id"])[0]["val/task1/mse"] == (
        pytest.approx(0.1))
    for run in exp.runs():  # the sweep's claim: done runs are skipped
      h = config_lib.config_hash(run.config)
      got = s.claim("quickstart", run.name, run.grid,
                    config_lib.to_dict(run.config), h, 0, PROV)
      assert (got is None) == (run.grid["model"] == "shared_bottom")


def test_store_import_errors_name_file_and_line(tmp_path):
  good = {**_record("mmoe", 0), "config": {"model": {"name": "mmoe"}}}
  bad = tmp_path / "bad.jsonl"
  bad.write_text(paper.dumps_records([good]) + "{not json\n")
  fresh = tmp_path / "fresh.db"
  code, msg = _main("store", "import", bad, "--store", fresh)
  assert code == 2 and f"{bad}:2: not JSON" in msg
  lost = {k: v for k, v in good.items() if k != "config"}
  bad.write_text(paper.dumps_records([good, lost]))
  code, msg = _main("store", "import", bad, "--store", fresh)
  assert code == 2 and f"{bad}:2: a done record without config" in msg, msg
  with Store(fresh) as s:  # the file is checked before anything is stored
    assert s.results("quickstart") == []
  code, msg = _main("store", "import", tmp_path / "nope.jsonl", "--store",
                    fresh)
  assert code == 2 and "no export file" in msg and "--export" in msg
  code, msg = _main("store", "import", "--store", fresh)
  assert code == 2 and "needs the export files" in msg


def test_export_errors(tmp_path):
  d = _paper_dir(tmp_path)
  before = (d / "results" / "quickstart.jsonl").read_bytes()
  code, msg = _main("paper", "--paper", d, "--export", "--store",
                    tmp_path / "none.db")
  assert code == 2 and "no results store" in msg and "quickstart" in msg
  assert not (tmp_path / "none.db").exists()
  with Store(tmp_path / "other.db") as store:  # a run of another config
    rid = store.claim("quickstart", "x", {"model": "mmoe", "seed": 0}, {},
                      "0" * 16, 0)
    store.finish(rid, {"status": "done", "metrics": {"test/a/mse": 1.0}})
  code, msg = _main("paper", "--paper", d, "--export", "--store",
                    tmp_path / "other.db")
  assert code == 2
  assert "no results of experiment 'quickstart'" in msg
  assert "mtrec run quickstart" in msg and "mtrec paper --export" in msg
  assert (d / "results" / "quickstart.jsonl").read_bytes() == before
  for argv, words in ((["--store", "x.db"], "add --export"),
                      (["--export", "--check"], "goes without --check"),
                      (["--export", "--from", d], "goes without --check")):
    code, msg = _main("paper", "--paper", d, *argv)
    assert code == 2 and words in msg


# --------------------------------------------------------- the repository


def test_committed_paper_matches_its_regeneration(monkeypatch):
  """The must-show: on a checkout, the tables in paper/paper.md are exactly
  what paper/results/*.jsonl regenerate (`mtrec paper --check`)."""
  monkeypatch.chdir(ROOT)
  code, out = _main("paper", "--check", "--from", "paper/results")
  assert code == 0, out
  assert "generated regions match their regeneration" in out
  assert _main("paper", "--check")[0] == 0  # --from defaults to it
  blocks = paper.load_spec(ROOT / "paper")
  # Every experiment has its results file, but a grid still running
  # (partial=True), whose blocks then say "no results yet".
  optional = paper.partial_experiments(blocks)
  assert blocks and all((ROOT / "paper" / "results" / f"{e}.jsonl").exists()
                        for e in paper.experiments_of(blocks)
                        if e not in optional)


def test_table_directions_name_unregistered_columns(tmp_path):
  """A report column has no registered direction: the block says it."""
  records = [{**r, "report": {"gap": 0.1 * (i + 1)}}
             for i, r in enumerate(RECORDS)]
  spec = SPEC.replace(
      'Table("qs-mae", "quickstart", metrics=("mae",), baseline=None,',
      'Table("qs-mae", "quickstart", metrics=("report/gap",), baseline=None,'
      ' directions={"report/gap": "min"},')
  d = _paper_dir(tmp_path, records=records, spec=spec)
  paper.write(d)
  text = (d / "paper.md").read_text()
  assert "gap ↓" in text and "**0.1500 ± 0.0707**" in text
  with pytest.raises(ValueError, match="unknown direction"):
    paper.write(_paper_dir(tmp_path / "no_directions", records=records,
                           spec=spec.replace(
                               ' directions={"report/gap": "min"},', '')))
