"""train_and_evaluate: selection on validation, early stopping, divergence."""
import json

import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.train import loop


def _tiny(**overrides):
  base = {"data.name": "mmoe_synthetic", "model.name": "shared_bottom",
          "model.bottom_hidden": (16,), "model.tower_hidden": (8,),
          "train.batch_size": 64, "train.num_steps": 40, "train.eval_every": 10,
          "train.log_every": 10}
  cfg = config_lib.apply_overrides(config_lib.base_config(), base)
  with cfg.data.ignore_type():
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 256, 128, 128
  return config_lib.apply_overrides(cfg, overrides)


def test_result_files_and_selection(tmp_path):
  res = loop.train_and_evaluate(_tiny(), tmp_path, experiment="t",
                                grid={"seed": 0}, progress=False)
  assert res["status"] == "done" and res["steps"] == 40
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  vals = {l["step"]: l["val/loss"] for l in lines}
  assert res["best_step"] == min(vals, key=vals.get)
  # The final validation metrics are those of the selected parameters.
  assert res["metrics"]["val/loss"] == pytest.approx(vals[res["best_step"]], rel=1e-6)
  assert res["metrics"]["val/loss_ratio_sum"] > 0
  on_disk = json.loads((tmp_path / "result.json").read_text())
  assert on_disk["metrics"] == res["metrics"]


def test_early_stopping_on_validation():
  # A learning rate of 0 never improves after the first evaluation.
  res = loop.train_and_evaluate(
      _tiny(**{"optimizer.learning_rate": 0.0, "train.patience": 2}),
      progress=False)
  assert res["steps"] == 30 and res["best_step"] == 10


def test_divergence_is_recorded_with_its_step(tmp_path):
  res = loop.train_and_evaluate(
      _tiny(**{"optimizer.learning_rate": 1e30, "optimizer.name": "sgd",
               "optimizer.momentum": 0.0}), tmp_path, progress=False)
  assert res["status"] == "diverged"
  assert 0 <= res["diverged_step"] < 40
  assert "non-finite" in res["error"]
  assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"


def test_bad_selection_metric_is_an_error():
  with pytest.raises(ValueError, match="selection_metric"):
    loop.Components(_tiny(**{"train.selection_metric": "test/task1/mse"}))


def test_dwa_gets_the_runs_epoch_length():
  # DWA averages losses per epoch (Liu et al. 2019, LibMTL): the loop gives
  # it the epoch of train_batches, rows // batch size (256 // 64 = 4).
  c = loop.Components(_tiny(**{"strategy.name": "dwa"}))
  rows = len(next(iter(c.dataset.splits["train"].values())))
  assert c.steps_per_epoch == rows // 64 == 4
  assert c.strategy.hparams["steps_per_epoch"] == 4
  assert c.strategy.hparams["period"] == "epoch"
  res = loop.train_and_evaluate(_tiny(**{"strategy.name": "dwa"}),
                                progress=False)
  assert res["strategy_state"]["periods"] == 40 // 4  # ten epochs completed
  # An explicit setting wins; an inner strategy of `alternating` gets it too.
  c = loop.Components(_tiny(**{"strategy.name": "dwa",
                               "strategy.hparams.steps_per_epoch": 3}))
  assert c.strategy.hparams["steps_per_epoch"] == 3
  c = loop.Components(_tiny(**{"strategy.name": "alternating",
                               "strategy.hparams.inner": "dwa"}))
  assert c.strategy.hparams["steps_per_epoch"] == 4


def test_batch_larger_than_the_training_split_is_an_error():
  with pytest.raises(ValueError, match="larger than the 256 training rows"):
    loop.Components(_tiny(**{"train.batch_size": 512}))
