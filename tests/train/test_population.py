"""Population training (train/population.py) against solo runs of the same
grid: every member's stored result, eval records and train log equal a solo
run's up to float rounding (relative 1e-5; measured ~2e-7 on this model),
with the solo run's config hash; reruns skip; resume; fallbacks.

A tiny MMoE on 1,024 synthetic rows, 30 steps, so each test takes seconds
(most of it compiling)."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.config import base_config
from mtrec_jax.results import run_files
from mtrec_jax.train import population

# Checkpoints change no result (nor the config hash).
CHECKPOINTS = sweep.Selection(overrides={"train.keep_checkpoints": 2,
                                         "train.checkpoint_every": 20})
RTOL = 1e-5  # relative; vmapped matmuls may sum in another order


class OneHost:
  primary = True

  def agree(self, run_id):
    return run_id


def tiny(axes=(), seeds=(0, 1, 2), **overrides):
  c = base_config()
  c.data.name = "mmoe_synthetic"
  c.data.n_train, c.data.n_val, c.data.n_test = 1024, 256, 256
  c.model.name = "mmoe"
  c.model.num_experts, c.model.expert_hidden = 2, (8,)
  c.model.tower_hidden = (4,)
  c.optimizer.learning_rate = 3e-3
  c.train.batch_size, c.train.num_steps = 64, 30
  c.train.eval_every, c.train.log_every = 10, 5
  c.train.eval_batch_size = 100  # 3 eval batches: replayed by index
  c.train.patience = 1  # members may stop at different evaluations
  c.log.tensorboard = False
  c.train.keep_checkpoints = 0  # but where a test resumes
  for k, v in overrides.items():
    c = config_lib.apply_overrides(c, {k: v})
  return experiment_lib.Experiment(c, axes=tuple(axes), seeds=seeds,
                                   name="poptest")


def sweep_of(exp, tmp, name, trainer=None, **kwargs):
  logs = []
  out = sweep.run_sweep(exp, store=tmp / f"{name}.db", workdir=tmp / name,
                        hosts=OneHost(), provenance={"host": "test"},
                        trainer=trainer, log=logs.append, **kwargs)
  return out, logs


def assert_close(a, b, what):
  assert a.keys() == b.keys(), what
  for k in a:
    if isinstance(a[k], (int, float)) and a[k] is not None:
      np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=1e-7,
                                 err_msg=f"{what}: {k}")
    else:
      assert a[k] == b[k], f"{what}: {k}"


def run_dir(result) -> pathlib.Path:
  return pathlib.Path(result["params_dir"]).parent


def assert_same_runs(solo, pop):
  assert len(solo.results) == len(pop.results)
  for a, b in zip(solo.results, pop.results):
    name = a["run_name"]
    assert (a["config_hash"], a["seed"]) == (b["config_hash"], b["seed"])
    assert a["status"] == b["status"] == "done", name
    assert (a["steps"], a["best_step"]) == (b["steps"], b["best_step"]), name
    assert_close(a["metrics"], b["metrics"], name)
    assert len(a["train_log"]) == len(b["train_log"]), name
    for ra, rb in zip(a["train_log"], b["train_log"]):
      assert_close(ra, rb, f"{name} train log")
    ea = run_files.read_evals(run_dir(a) / run_files.METRICS_FILE)
    eb = run_files.read_evals(run_dir(b) / run_files.METRICS_FILE)
    assert len(ea) == len(eb) > 0
    for ra, rb in zip(ea, eb):
      assert_close(ra, rb, f"{name} eval record")
    # The same record fields as a solo run, plus the population's.
    assert set(b) - set(a) == {"population"}, name
    assert set(a) - set(b) == set(), name
    assert b["population"]["size"] == len(pop.results)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pop")
  exp = tiny()
  solo, _ = sweep_of(exp, tmp, "solo")
  pop, logs = sweep_of(exp, tmp, "pop", population.PopulationTrainer(3),
                       selection=CHECKPOINTS)
  return tmp, exp, solo, pop, logs


def test_population_of_seeds_equals_solo_runs(seeds):
  tmp, exp, solo, pop, logs = seeds
  assert "  trained as one population of 3" in logs
  assert pop.counts == {"done": 3}
  assert_same_runs(solo, pop)
  # Members' own seeds: different data orders and initialisations.
  tests = [r["metrics"]["test/loss"] for r in pop.results]
  assert len(set(tests)) == 3


def test_rerun_skips_the_stored_members(seeds):
  tmp, exp, solo, pop, logs = seeds
  again, logs = sweep_of(exp, tmp, "pop", population.PopulationTrainer(3))
  assert [o.status for o in again.outcomes] == ["skipped"] * 3
  assert again.counts == {"done": 3}


def test_resume_from_a_mid_checkpoint(seeds):
  """Each member's newest checkpoint (step 30) removed: --resume restores
  step 20 of every member as one population and ends as the solo runs."""
  tmp, exp, solo, pop, _ = seeds
  for r in pop.results:
    ckpt = run_dir(r) / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert 30 in steps and 20 in steps, steps
    shutil.rmtree(ckpt / "30")
  again, logs = sweep_of(exp, tmp, "pop", population.PopulationTrainer(3),
                         force=True, resume=True, selection=CHECKPOINTS)
  assert any("resuming the population from the checkpoint of step 20" in m
             for m in logs), logs
  assert_same_runs(solo, again)


def test_population_mixing_learning_rates_and_weights(tmp_path):
  """Traced hyper-parameters: the learning rate and `static`'s weights
  differ between the two members of one population."""
  exp = tiny(axes=[experiment_lib.Axis("hp", None, {
      "a": {"optimizer.learning_rate": 3e-3,
            "strategy.hparams.weights": [1.0, 0.5]},
      "b": {"optimizer.learning_rate": 1e-2,
            "strategy.hparams.weights": [0.25, 2.0]}})],
             seeds=(0,), **{"strategy.name": "static", "train.num_steps": 20,
                            "strategy.hparams.weights": [1.0, 1.0]})
  solo, _ = sweep_of(exp, tmp_path, "solo")
  pop, logs = sweep_of(exp, tmp_path, "pop",
                       population.PopulationTrainer(None))
  assert "  trained as one population of 2" in logs
  assert_same_runs(solo, pop)
  assert solo.results[0]["config_hash"] != solo.results[1]["config_hash"]


def test_a_python_branch_on_a_member_value_falls_back_to_solo(tmp_path):
  """`max` checks `temperature < 0` in Python: it cannot take a traced
  temperature, so its runs train one at a time, as without --population."""
  exp = tiny(axes=[experiment_lib.Axis(
      "t", "strategy.hparams.temperature", (0.5, 2.0))], seeds=(0,),
      **{"strategy.name": "max", "strategy.hparams.temperature": 1.0,
         "train.num_steps": 10})
  pop, logs = sweep_of(exp, tmp_path, "pop",
                       population.PopulationTrainer(None))
  assert any(m.startswith("  not one population (the step cannot take "
                          "strategy.hparams.temperature") for m in logs), logs
  assert pop.counts == {"done": 2}
  assert all("population" not in r for r in pop.results)


def test_group_runs_splits_on_anything_but_member_keys():
  exp = tiny(axes=[
      experiment_lib.Axis("model", "model.name", ("mmoe", "shared_bottom")),
      experiment_lib.Axis("lr", "optimizer.learning_rate", (1e-3, 1e-2))],
             seeds=(0, 1, 2))
  runs = exp.runs()
  groups = population.group_runs(runs)
  assert [[runs[i].grid["model"] for i in g] for g in groups] == [
      ["mmoe"] * 6, ["shared_bottom"] * 6]
  assert [len(g) for g in population.group_runs(runs, 4)] == [4, 2, 4, 2]
  # An integer hyper-parameter (maybe a count or a shape) splits groups.
  exp = tiny(axes=[experiment_lib.Axis("k", "strategy.hparams.steps", (1, 2))],
             seeds=(0,), **{"strategy.hparams.steps": 1})
  assert population.group_runs(exp.runs()) == [[0], [1]]
  with pytest.raises(ValueError, match="give the most runs"):
    population.trainer("0")
  assert population.trainer(None) is None
  assert population.trainer("auto").size is None
  from mtrec_jax import cli
  args = cli.build_parser().parse_args(["run", "quickstart",
                                        "--population", "3"])
  assert population.trainer(args.population).size == 3


def test_member_strategy_builder_agrees_with_the_loop():
  """population._strategy (which takes traced overrides) builds what
  loop.build_strategy builds from the same config."""
  from mtrec_jax.train import loop
  for name, hp in (("dwa", {"temperature": 2.0}), ("static",
                   {"weights": [1.0, 2.0]}), ("mean", {})):
    cfg = tiny(**{"strategy.name": name}).config
    for k, v in hp.items():
      cfg = config_lib.apply_overrides(cfg, {f"strategy.hparams.{k}": v})
    a = loop.build_strategy(cfg, 16)
    b = population._strategy(cfg, 16, {}, cfg.optimizer)
    assert (a.name, a.kind, json.dumps(a.hparams, sort_keys=True,
                                       default=str)) == (
        b.name, b.kind, json.dumps(b.hparams, sort_keys=True, default=str))


MESH_SCRIPT = """
import json, pathlib, sys, tempfile
import jax
sys.path.insert(0, {tests!r})
from test_population import OneHost, tiny, sweep_of
from mtrec_jax.train import population
tmp = pathlib.Path(tempfile.mkdtemp())
exp = tiny(seeds=(0, 1), **{{"train.num_steps": 20}})
one, _ = sweep_of(exp, tmp, "one",
                  population.PopulationTrainer(2, jax.devices()[:1]))
mesh, logs = sweep_of(exp, tmp, "mesh", population.PopulationTrainer(2))
print(json.dumps({{"devices": jax.device_count(),
                  "mesh": dict(population.population_mesh(2).shape),
                  "one": [r["metrics"] for r in one.results],
                  "mesh_results": [r["metrics"] for r in mesh.results],
                  "logs": logs}}))
"""


@pytest.mark.slow
def test_population_sharded_over_a_mesh_equals_one_device():
  """Two CPU devices: the member axis sharded over a 'population' mesh axis
  gives what the population gives on one device."""
  import os
  import subprocess
  import sys
  tests = str(pathlib.Path(__file__).parent)
  env = {**os.environ,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", MESH_SCRIPT.format(tests=tests)],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["devices"] == 2 and res["mesh"] == {"population": 2}
  assert "  trained as one population of 2" in res["logs"]
  for a, b in zip(res["one"], res["mesh_results"]):
    assert_close(a, b, "mesh vs one device")


def test_sigterm_checkpoints_every_member_and_resume_ends_as_solo(
    seeds, monkeypatch):
  """SIGTERM at step 13 (`train.faults`' hook; the population's
  `preemption.watch` turns it into a flag): every member checkpoints step 13
  and is marked preempted, result.json says so; --resume continues the
  population from step 13 and ends as the solo runs."""
  tmp, exp, solo, _, _ = seeds
  monkeypatch.setenv("MTREC_FAULT", "SIGTERM@13:step")
  cut, _ = sweep_of(exp, tmp, "term", population.PopulationTrainer(3),
                    selection=CHECKPOINTS)
  assert [o.status for o in cut.outcomes] == ["preempted"] * 3
  for o in cut.outcomes:
    folder = next((tmp / "term" / "poptest").glob(f"{o.run.name}@*"))
    assert (folder / "checkpoints" / "13").is_dir()
    assert json.loads((folder / "result.json").read_text())["status"] == (
        "preempted")
  monkeypatch.delenv("MTREC_FAULT")
  again, logs = sweep_of(exp, tmp, "term", population.PopulationTrainer(3),
                         resume=True, selection=CHECKPOINTS)
  assert any("resuming the population from the checkpoint of step 13" in m
             for m in logs), logs
  assert_same_runs(solo, again)


def test_hash_dropout_bits_population_equals_solo(tmp_path):
  """train.dropout_bits='hash' (train/dropout_bits.py): a population of 2
  ends as its solo runs, and the masks differ from Threefry's (other test
  losses) while the config hashes say which run is which."""
  exp = tiny(seeds=(0, 1), **{"model.dropout": 0.3,
                              "train.dropout_bits": "hash"})
  solo, _ = sweep_of(exp, tmp_path, "solo")
  pop, _ = sweep_of(exp, tmp_path, "pop", population.PopulationTrainer(2))
  assert_same_runs(solo, pop)
  threefry = tiny(seeds=(0,), **{"model.dropout": 0.3})
  other, _ = sweep_of(threefry, tmp_path, "threefry")
  assert other.results[0]["config_hash"] != solo.results[0]["config_hash"]
  assert (other.results[0]["metrics"]["test/loss"]
          != solo.results[0]["metrics"]["test/loss"])
