"""`strategy.rep_gramian`: a config key, checked early, part of run identity
without changing the hashes of runs stored before it existed."""
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.results import store as store_lib
from mtrec_jax.train import loop
from mtrec_jax.train import step as step_lib


def _tiny(**overrides):
  base = {"data.name": "mmoe_synthetic", "model.name": "shared_bottom",
          "model.bottom_hidden": (16,), "model.tower_hidden": (8,),
          "train.batch_size": 64, "train.num_steps": 2, "train.eval_every": 2,
          "train.log_every": 2, "strategy.name": "gradnorm",
          "strategy.mode": "rep"}
  cfg = config_lib.apply_overrides(config_lib.base_config(), base)
  with cfg.data.ignore_type():
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 256, 128, 128
  return config_lib.apply_overrides(cfg, overrides)


def test_default_is_rows_and_a_bad_value_names_the_closest():
  assert config_lib.base_config().strategy.rep_gramian == "rows"
  assert step_lib.REP_GRAMIANS == ("rows", "batch_sum")
  for good in step_lib.REP_GRAMIANS:
    assert step_lib.check_rep_gramian(good) == good
  # Checked when the run is built, before anything is written or trained.
  with pytest.raises(ValueError, match="Did you mean 'batch_sum'"):
    loop.Components(_tiny(**{"strategy.rep_gramian": "batchsum"}))
  with pytest.raises(ValueError, match="strategy.rep_gramian 'row'.*'rows'"):
    step_lib.check_rep_gramian("row")


def test_the_loop_passes_it_to_the_train_step(monkeypatch):
  seen = []
  real = loop.make_train_step

  def spy(*args, **kwargs):
    seen.append(kwargs.get("rep_gramian"))
    return real(*args, **kwargs)

  monkeypatch.setattr(loop, "make_train_step", spy)
  for how in ("batch_sum", "rows"):
    res = loop.train_and_evaluate(_tiny(**{"strategy.rep_gramian": how}),
                                  progress=False)
    assert res["status"] == "done", res.get("error")
  assert seen == ["batch_sum", "rows"]


def test_hash_unchanged_for_the_default_and_batch_sum_is_another_run():
  cfg = config_lib.base_config()
  today = config_lib.config_hash(cfg)
  # A config stored before the key existed (rep mode then always used rows)
  # hashes, with ADDED_KEYS filled in, as today's default.
  old = config_lib.to_dict(cfg)
  del old["strategy"]["rep_gramian"]
  assert store_lib.ADDED_KEYS["strategy.rep_gramian"] == "rows"
  assert store_lib.stored_config_hash(old) == today
  assert config_lib.config_hash(old) != today  # hence the migration
  batch_sum = config_lib.apply_overrides(
      config_lib.base_config(), ["strategy.rep_gramian=batch_sum"])
  assert config_lib.config_hash(batch_sum) != today
