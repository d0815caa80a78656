"""Issue 16: a run folder's result.json carries the data identity its
stored result has (``result["data"]``), so the folder alone says which data
the run trained on; `mtrec status` says when a done run's data changed
since (the next `mtrec run` trains it again)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mtrec_jax.data  # noqa: F401  (registers the datasets)
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.config import base_config
from mtrec_jax.data import identity
from mtrec_jax.results import run_files
from mtrec_jax.results.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_movielens import write_100k  # noqa: E402  (tiny 100K-format files)
from test_data_identity import _same_size_edit  # noqa: E402  (a cp -p edit)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path / "cache"))


class _FileTrainer:
  """Trains nothing; writes result.json into the run folder and returns
  it, as the training loop does."""

  def prepare(self, run):
    return None

  def batches(self, runs):
    return [[i] for i in range(len(runs))]

  def train(self, claimed, **kw):
    out = []
    for c in claimed:
      config_hash, seed = sweep.run_key(c.run)
      res = {"status": "done", "config_hash": config_hash, "seed": seed,
             "metrics": {"val/loss": 1.0}, "error": None}
      c.workdir.mkdir(parents=True, exist_ok=True)
      run_files.write_json(c.workdir / "result.json", res)
      out.append(res)
    return out


class _OneHost:
  primary = True

  def agree(self, run_id):
    return run_id


def test_result_json_names_the_data_it_trained_on(tmp_path):
  source = write_100k(tmp_path / "ml-100k")
  c = base_config()
  c.data = {"name": "movielens", "data_dir": str(source),
            "strict_counts": False, "storage": "memory"}
  exp = experiment_lib.Experiment(c, name="toy")
  sweep.run_sweep(exp, store=tmp_path / "m.db", workdir=tmp_path / "runs",
                  trainer=_FileTrainer(), hosts=_OneHost(), provenance={})
  (folder,) = (tmp_path / "runs" / "toy").iterdir()
  written = run_files.read_json(folder / "result.json")
  want = identity.source_hash(source)["hash"]
  assert written["data"]["hash"] == want
  assert written["data"]["dataset"] == "movielens"
  assert written["metrics"] == {"val/loss": 1.0}  # the rest as written
  with Store(tmp_path / "m.db") as s:
    (row,) = s.results("toy")
  assert row["data"] == written["data"]


def test_status_says_when_a_done_run_trained_on_other_data(tmp_path):
  source = write_100k(tmp_path / "ml-100k")
  c = base_config()
  c.data = {"name": "movielens", "data_dir": str(source),
            "strict_counts": False, "storage": "memory"}
  exp = experiment_lib.Experiment(c, name="toy")
  runs = sweep.Selection().runs(exp)

  def status():
    with Store(tmp_path / "m.db") as s:
      return sweep.with_data_changes(
          s, "toy", runs, s.status("toy", [(r.name, *sweep.run_key(r))
                                           for r in runs]))

  def run():
    return sweep.run_sweep(exp, store=tmp_path / "m.db",
                           workdir=tmp_path / "runs", trainer=_FileTrainer(),
                           hosts=_OneHost(), provenance={})

  run()
  before = identity.source_hash(source)["hash"]
  ((name, _, _, state, _, attempts, detail),) = status()
  assert (state, attempts, detail) == ("done", 1, "")
  _same_size_edit(source / "u.data")
  after = identity.source_hash(source)["hash"]
  ((_, _, _, state, _, _, detail),) = status()
  assert state == "done"
  assert detail == (f"trained on other data ({before}; now {after}): the "
                    f"next mtrec run trains it again")
  # `mtrec status` (mtrec_jax.api.status) says the same.
  from mtrec_jax import api
  spec = tmp_path / "toy_exp.py"
  spec.write_text(
      "from mtrec_jax.config import base_config\n"
      "from mtrec_jax.experiment import Experiment\n"
      "c = base_config()\n"
      f"c.data = {dict(c.data)!r}\n"
      "toy = Experiment(c, name='toy')\n")
  (shown,) = api.status(f"{spec}:toy", store=tmp_path / "m.db")
  assert (shown.status, shown.detail) == ("done", detail)
  # As it says: the next run trains it, and then it is plain done.
  (outcome,) = run().outcomes
  assert outcome.status == "done"
  ((_, _, _, state, _, attempts, detail),) = status()
  assert (state, attempts, detail) == ("done", 2, "")
