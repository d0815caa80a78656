"""Issue 16 defects 7 and 8: impossible config values, --set on a grid
axis's key and a seed given twice are refused before anything is written,
with an error naming the key (or axis) and the fix."""
import pytest

from mtrec_jax import cli
from mtrec_jax import config_checks
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.config import base_config


@pytest.mark.parametrize("key, value", [
    ("optimizer.learning_rate", "-0.001"), ("optimizer.learning_rate", "0"),
    ("train.num_steps", "0"),
    ("train.num_steps", "-5"), ("train.eval_every", "0"),
    ("train.log_every", "0"), ("train.batch_size", "0"),
    ("train.eval_batch_size", "0"), ("train.patience", "-1"),
    ("optimizer.warmup_steps", "-1"), ("optimizer.grad_clip_norm", "-1.0"),
    ("train.keep_checkpoints", "-1"), ("train.mesh_model", "0"),
])
def test_impossible_values_fail_before_anything_is_written(tmp_path, capsys,
                                                           key, value):
  store = tmp_path / "mtrec.db"
  code = cli.main(["run", "quickstart", "--workdir", str(tmp_path / "runs"),
                   "--store", str(store), "--set", f"{key}={value}",
                   "--no-progress"])
  assert code == 2
  err = capsys.readouterr().err
  assert f"config key {key}" in err and f"--set {key}=" in err
  assert "Traceback" not in err
  assert not store.exists() and not (tmp_path / "runs").exists()
  # `mtrec show` (the same selection) says it too.
  assert cli.main(["show", "quickstart", "--set", f"{key}={value}"]) == 2
  assert f"config key {key}" in capsys.readouterr().err


def test_every_bundled_experiment_passes_the_checks():
  for name, _ in experiment_lib.list_experiments():
    for run in experiment_lib.get_experiment(name).runs():
      config_checks.check_values(run.config, run.name)


def test_boundary_values_pass():
  c = base_config()
  c.train.num_steps = c.train.eval_every = c.train.log_every = 1
  c.train.batch_size = 1
  c.train.patience = c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = 1e-12
  config_checks.check_values(c)
  for bad in (float("inf"), float("nan")):
    c.optimizer.learning_rate = bad
    with pytest.raises(ValueError, match="optimizer.learning_rate"):
      config_checks.check_values(c)


def test_set_on_a_grid_axis_key_is_refused(tmp_path, capsys):
  store = tmp_path / "mtrec.db"
  code = cli.main(["run", "quickstart", "--store", str(store), "--workdir",
                   str(tmp_path), "--set", "model.name=mmoe"])
  assert code == 2
  err = capsys.readouterr().err
  assert "grid axis 'model'" in err and "--only model=" in err
  assert "shared_bottom" in err  # the axis's values
  assert not store.exists()
  assert cli.main(["show", "quickstart", "--set", "seed=3"]) == 2
  assert "--seeds" in capsys.readouterr().err


def test_set_on_a_labelled_axis_key_is_refused():
  exp = experiment_lib.Experiment(
      base_config(), name="toy", axes=(experiment_lib.Axis(
          "opt", None, {"slow": {"optimizer.learning_rate": 1e-4},
                        "fast": {"optimizer.learning_rate": 1e-2}}),))
  with pytest.raises(ValueError, match="grid axis 'opt'"):
    sweep.Selection(overrides=["optimizer.learning_rate=0.1"]).runs(exp)
  with pytest.raises(ValueError, match="grid axis 'opt'"):
    sweep.Selection(overrides={"optimizer.learning_rate": 0.1}).runs(exp)
  # Keys no axis sets are fine.
  runs = sweep.Selection(overrides=["train.num_steps=5"]).runs(exp)
  assert [r.config.train.num_steps for r in runs] == [5, 5]


def test_a_seed_given_twice_is_refused(capsys):
  assert cli.main(["show", "quickstart", "--seeds", "0,0"]) == 2
  err = capsys.readouterr().err
  assert "seed 0 given more than once" in err
  assert cli.main(["show", "quickstart", "--seeds", "0-2,1"]) == 2
  assert "seed 1 given" in capsys.readouterr().err
  assert cli.main(["show", "quickstart", "--seeds", "0,1"]) == 0
