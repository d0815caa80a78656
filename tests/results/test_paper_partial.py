"""`mtrec paper` with a grid still running (blocks with partial=True).

Uses quickstart's registered grid (model shared_bottom / mmoe, seed 0: two
runs), so "N of M runs done" has a real M. Records are synthetic.
"""
from __future__ import annotations

import json

import pytest

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import paper
from mtrec_jax.results.store import Store
from tests.results.test_paper import PROV, _main, _record

SPEC = '''
from mtrec_jax.results.paper import Figure, Table

BLOCKS = [
    Table("qs-t", "quickstart", metrics=("mse",), partial={partial},
          baseline=({{"model": "mmoe"}}, {{"model": "shared_bottom"}}),
          caption="Partial table."),
    Figure("qs-p", "quickstart", "pareto", partial={partial},
           options={{"x": "test/task1/mse", "y": "test/task2/mse",
                    "highlight": ("mmoe",)}}, caption="Partial figure."),
]
'''

PAPER = """# P

<!-- mtrec:table qs-t -->
<!-- mtrec:end -->

<!-- mtrec:figure qs-p -->
<!-- mtrec:end -->
"""


def _dir(root, records=None, partial=True):
  d = root / "paper"
  (d / "results").mkdir(parents=True)
  (d / "paper_spec.py").write_text(SPEC.format(partial=partial))
  (d / "paper.md").write_text(PAPER)
  if records is not None:
    (d / "results" / "quickstart.jsonl").write_text(
        paper.dumps_records(records))
  return d


def _grid_size():
  return len(experiment_lib.get_experiment("quickstart").runs())


def test_no_results_file_is_a_generated_sentence(tmp_path):
  d = _dir(tmp_path)
  code, out = _main("paper", "--paper", d)
  assert code == 0, out
  text = (d / "paper.md").read_text()
  n = _grid_size()
  assert text.count(
      f"**No results yet**: there is no `results/quickstart.jsonl` yet for "
      f"the {n} runs of `quickstart`'s grid.") == 2
  assert "*Partial table.*" in text and "|" not in text
  assert not (d / "figures" / "qs-p.png").exists()
  code, out = _main("paper", "--check", "--paper", d)
  assert code == 0, out
  # Without partial=True the same missing file is an error, as before.
  code, out = _main("paper", "--paper", _dir(tmp_path / "strict",
                                             partial=False))
  assert code == 2 and "no results of experiment 'quickstart'" in out


def test_incomplete_grid_states_runs_done_and_leaves_out_empty_rows(tmp_path):
  done = _record("shared_bottom", 0)
  missing = {**_record("mmoe", 0), "status": "missing", "metrics": {}}
  d = _dir(tmp_path, [done, missing])
  code, out = _main("paper", "--paper", d)
  assert code == 0, out
  text = (d / "paper.md").read_text()
  status = (f"**Incomplete grid: 1 of {_grid_size()} runs done** (1 not run "
            f"yet). Left out, with no done run yet: model=mmoe.")
  assert text.count(status) == 2  # the table and the figure
  table = text[text.index("<!-- mtrec:table"):text.index("<!-- mtrec:fig")]
  assert "| shared_bottom " in table and "| mmoe " not in table
  # The mmoe baseline has no row yet: its Δm% column is left out; the
  # remaining baseline is the only one.
  assert "Δm% ↑" in table and "vs mmoe" not in table
  assert "Not done" not in table  # missing runs are counted, not listed
  assert (d / "figures" / "qs-p.png").exists()
  assert _main("paper", "--check", "--paper", d)[0] == 0
  # A failed run counts as such, and a file with no done run says so.
  failed = {**done, "status": "failed", "metrics": {}}
  d2 = _dir(tmp_path / "none", [failed, missing])
  assert _main("paper", "--paper", d2)[0] == 0
  text = (d2 / "paper.md").read_text()
  assert (f"**No results yet**: 0 of the {_grid_size()} runs of "
          f"`quickstart`'s grid are done") in text
  assert "**Nothing to plot yet** (no run is done yet)" in text


def test_a_complete_grid_renders_like_any_block(tmp_path):
  records = [_record("shared_bottom", 0), _record("mmoe", 0)]
  with_partial = paper.generate(_dir(tmp_path / "a", records))
  without = paper.generate(_dir(tmp_path / "b", records, partial=False))
  assert with_partial.bodies == without.bodies
  assert "Incomplete" not in with_partial.new


def test_blocks_of_one_experiment_must_agree(tmp_path):
  d = _dir(tmp_path)
  spec = (d / "paper_spec.py").read_text()
  (d / "paper_spec.py").write_text(
      spec.replace('"pareto", partial=True', '"pareto", partial=False'))
  with pytest.raises(ValueError, match="disagree on partial"):
    paper.load_spec(d)


def _store_one_run(path):
  """A done run of quickstart's shared_bottom point, none of mmoe."""
  exp = experiment_lib.get_experiment("quickstart")
  with Store(path) as store:
    for run in exp.runs():
      if run.grid["model"] != "shared_bottom":
        continue
      h = config_lib.config_hash(run.config)
      rid = store.claim("quickstart", run.name, run.grid,
                        config_lib.to_dict(run.config), h, 0, PROV)
      rec = _record("shared_bottom", 0)
      store.finish(rid, {**{k: rec[k] for k in ("grid", "seed", "tasks",
                                                "metrics", "train_log")},
                         **PROV, "status": "done", "config_hash": h,
                         "steps": 11, "wall_time_s": 3.0,
                         "compile_time_s": 1.0, "experiment": "quickstart"},
                   evals=rec["evals"])


def test_export_of_a_partial_grid(tmp_path):
  d = _dir(tmp_path)
  empty = tmp_path / "empty.db"
  Store(empty).close()
  # No run in the store: skipped (said on stderr), the paper says so.
  code, out = _main("paper", "--paper", d, "--export", "--store", empty)
  assert code == 0, out
  assert "not exported quickstart" in out
  assert not (d / "results" / "quickstart.jsonl").exists()
  assert "No results yet" in (d / "paper.md").read_text()
  # One of two runs: exported with a `missing` record and the durations.
  store = tmp_path / "s.db"
  _store_one_run(store)
  written = paper.export_from_store(d, store, only="quickstart")
  assert written == [d / "results" / "quickstart.jsonl"]
  paper.write(d)
  records = [json.loads(l) for l in
             (d / "results" / "quickstart.jsonl").read_text().splitlines()]
  assert [r["status"] for r in records] == ["done", "missing"]
  assert (records[0]["wall_time_s"], records[0]["compile_time_s"]) == (3.0,
                                                                       1.0)
  assert "started_at" not in records[0] and "run_id" not in records[0]
  text = (d / "paper.md").read_text()
  assert f"1 of {_grid_size()} runs done" in text
  assert _main("paper", "--check", "--paper", d)[0] == 0
  # --export NAMES names only experiments the paper uses.
  with pytest.raises(UnknownNameError,
                     match="uses no experiment 'census-mtl'.*quickstart"):
    paper.export_from_store(d, store, only="census-mtl")
