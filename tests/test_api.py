"""The Python API (`mtrec_jax.api`): the `mtrec` commands as functions,
which the command line calls, so both give the same runs, records and
tables."""
import doctest
import json
import subprocess
import sys

import pytest

import mtrec_jax
from mtrec_jax import api, cli, plugins, registry
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import tables

# A user's experiment file: `mean` vs `sum` on tiny synthetic data.
EXPERIMENTS_FILE = '''
from mtrec_jax.config import base_config
from mtrec_jax.experiment import Axis, Experiment
from mtrec_jax.registry import EXPERIMENTS


@EXPERIMENTS.register("api-tiny")
def tiny():
  """mean vs sum, 4 steps of a tiny shared-bottom model."""
  c = base_config()
  c.data.name = "mmoe_synthetic"
  c.data.n_train, c.data.n_val, c.data.n_test = 256, 64, 64
  c.model.name = "shared_bottom"
  c.model.bottom_hidden = (8,)
  c.model.tower_hidden = (4,)
  c.train.batch_size = 32
  c.train.num_steps = 4
  c.train.eval_every = 2
  return Experiment(c, axes=(Axis("strategy", "strategy.name",
                                  ("mean", "sum")),), seeds=(0, 1))
'''


@pytest.fixture(autouse=True)
def _forget_user_code(tmp_path_factory):
  """What a test's user code registers, and its modules, are gone after it:
  other tests (e.g. one that checks every registered experiment) see the
  bundled registries."""
  base = str(tmp_path_factory.getbasetemp())
  with registry.scratch(registry.EXPERIMENTS, registry.STRATEGIES):
    yield
  for name, module in list(sys.modules.items()):
    if str(getattr(module, "__file__", None) or "").startswith(base):
      del sys.modules[name]


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
  """One file for the module's tests (imported afresh by each)."""
  path = tmp_path_factory.mktemp("user") / "my_experiments.py"
  path.write_text(EXPERIMENTS_FILE)
  return path


@pytest.fixture
def spec(spec_file, monkeypatch):
  monkeypatch.setitem(plugins._state, "user_code", False)
  return f"{spec_file}:api-tiny"


def test_import_stays_light_and_exposes_the_api():
  code = ("import sys, mtrec_jax; "
          "print(sorted(m for m in sys.modules if m.startswith(('mtrec_jax', "
          "'jax', 'flax'))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "['mtrec_jax']"
  for name in ("run", "table", "status", "configs", "experiments", "export"):
    assert getattr(mtrec_jax, name) is getattr(api, name)
    assert name in dir(mtrec_jax)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    mtrec_jax.nope  # noqa: B018


def test_docstring_examples_run():
  failed, tried = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
  assert tried >= 2 and failed == 0


def test_option_values_take_text_or_python(spec):
  as_text = api.configs(spec, set=["train.num_steps=7"],
                        only=["strategy=sum"], seeds="0-1")
  as_python = api.configs(spec, set={"train.num_steps": 7},
                          only={"strategy": "sum"}, seeds=[0, 1])
  assert [r.name for r in as_text] == ["strategy=sum,seed=0",
                                       "strategy=sum,seed=1"]
  assert [r.config for r in as_text] == [r.config for r in as_python]
  assert as_text[0].config.train.num_steps == 7
  assert [r.name for r in api.configs(spec, seeds=1)] == [
      "strategy=mean,seed=1", "strategy=sum,seed=1"]
  with pytest.raises(ValueError, match="cannot read seeds"):
    api.configs(spec, seeds="zero")
  with pytest.raises(ValueError, match="write axis=value"):
    api.configs(spec, only=["strategy"])


def test_run_status_table_export_match_the_cli(spec, tmp_path, capsys):
  store, workdir = tmp_path / "s.db", tmp_path / "runs"
  assert [s.status for s in api.status(spec, store=store)] == ["missing"] * 4
  assert not store.exists()  # reading made no store
  results = api.run(spec, seeds="0-1", store=store, workdir=workdir,
                    log=None)
  assert [(r["grid"]["strategy"], r["grid"]["seed"], r["status"])
          for r in results] == [("mean", 0, "done"), ("mean", 1, "done"),
                                ("sum", 0, "done"), ("sum", 1, "done")]
  assert all(r["experiment"] == "api-tiny" for r in results)
  # Done runs are skipped and read back from the store, unchanged.
  again = api.sweep(spec, store=store, workdir=workdir, log=None)
  assert len(again.skipped) == 4 and not again.trained
  assert [r["metrics"] for r in again.results] == [r["metrics"]
                                                   for r in results]
  assert [s.status for s in api.status(spec, store=store)] == ["done"] * 4

  # A file spec's run is found for serving like a registered one's.
  from mtrec_jax.serve import load
  found = load.find_run_dir(spec, where={"strategy": "sum"}, seed=1,
                            store=store)
  assert found.parent == (workdir / "api-tiny").resolve()
  assert found.name.startswith("strategy=sum,seed=1@")

  t = api.table(spec, store=store)
  assert isinstance(t, tables.Table)
  assert t.row_labels() == ["strategy=mean", "strategy=sum"]
  column = t.columns[0]
  by_seed = dict(t.cell(("sum",), column).by_seed)
  assert by_seed == {r["grid"]["seed"]: r["metrics"][column]
                     for r in results if r["grid"]["strategy"] == "sum"}
  md = api.table(spec, store=store, format="md")
  capsys.readouterr()
  assert cli.main(["table", spec, "--store", str(store)]) == 0
  assert capsys.readouterr().out == md
  with pytest.raises(ValueError, match="table format 'html'"):
    api.table(spec, store=store, format="html")

  out, n = api.export(spec, "jsonl", out=tmp_path / "x.jsonl", store=store)
  assert n == 4
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(lines) == 4
  assert {l["experiment"] for l in lines} == {"api-tiny"}
  # `--from DIR` reads NAME.jsonl, NAME being the part after the colon.
  (tmp_path / "api-tiny.jsonl").write_text(out.read_text())
  from_dir = api.table(spec, from_dir=tmp_path, format="md")
  assert from_dir.splitlines()[0] == md.splitlines()[0]


def test_registered_lists_each_kind():
  strategies = dict(api.registered("strategies"))
  assert strategies["mean"].startswith("Equal weights of 1/K")
  assert "mgda" in strategies and "mmoe" in dict(api.registered("models"))
  assert dict(api.experiments())["quickstart"].startswith("Shared-bottom")
  with pytest.raises(UnknownNameError, match="Did you mean 'strategies'"):
    api.registered("strategy")
