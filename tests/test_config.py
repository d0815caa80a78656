"""Config overrides, hashing, grids and seeds parsing."""
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.experiment import Axis, Experiment, parse_seeds
from mtrec_jax.registry import UnknownNameError


def test_override_keeps_types_and_copies():
  base = config_lib.base_config()
  cfg = config_lib.apply_overrides(base, ["model.num_experts=8",
                                          "optimizer.learning_rate=1",
                                          "model.tower_hidden=16,8",
                                          "strategy.hparams.weights=[1.0, 2.0]"])
  assert cfg.model.num_experts == 8
  assert isinstance(cfg.optimizer.learning_rate, float)
  assert cfg.model.tower_hidden == (16, 8)
  assert tuple(cfg.strategy.hparams.weights) == (1.0, 2.0)
  assert base.model.num_experts != 8 or base is not cfg


def test_unknown_key_names_closest():
  with pytest.raises(UnknownNameError, match="model.num_experts"):
    config_lib.apply_overrides(config_lib.base_config(), ["model.num_expert=8"])
  with pytest.raises(UnknownNameError, match="train.batch_size"):
    config_lib.apply_overrides(config_lib.base_config(), {"trian.batch_size": 3})


def test_wrong_type_is_an_error():
  with pytest.raises(TypeError, match="train.num_steps"):
    config_lib.apply_overrides(config_lib.base_config(), ["train.num_steps=abc"])
  with pytest.raises(ValueError, match="key=value"):
    config_lib.apply_overrides(config_lib.base_config(), ["train.num_steps"])


def test_hash_ignores_seed_only():
  a = config_lib.base_config()
  b = config_lib.apply_overrides(a, {"seed": 5})
  c = config_lib.apply_overrides(a, {"train.num_steps": 5})
  assert config_lib.config_hash(a) == config_lib.config_hash(b)
  assert config_lib.config_hash(a) != config_lib.config_hash(c)


# The hash of the default config.  Stored runs are found by their hash, so
# this changes only on purpose: a new config key with a default must go into
# config_lib.HASHED_WHEN_CHANGED, which keeps earlier hashes.
BASE_CONFIG_HASH = "ebc34dd2e0e0d8eb"


def test_base_config_hash_is_stable():
  assert config_lib.config_hash(config_lib.base_config()) == BASE_CONFIG_HASH


def test_keys_added_later_are_hashed_only_when_changed():
  base = config_lib.base_config()
  for key, default in config_lib.HASHED_WHEN_CHANGED.items():
    node, leaf = base, key.split(".")[-1]
    for part in key.split(".")[:-1]:
      node = node[part]
    assert node[leaf] == default, key  # the default it was added with
    older = config_lib.to_dict(base)  # as stored before the key existed
    d = older
    for part in key.split(".")[:-1]:
      d = d[part]
    del d[leaf]
    assert (config_lib.config_hash(config_lib.ConfigDict(older))
            == config_lib.config_hash(base))
    changed = config_lib.apply_overrides(base, {key: default + 1})
    assert config_lib.config_hash(changed) != config_lib.config_hash(base)


def test_grid_expansion_and_filters():
  exp = Experiment(config_lib.base_config(),
                   axes=(Axis("model", "model.name", ("shared_bottom", "mmoe")),
                         Axis("opt", None, {"fast": {"optimizer.learning_rate": 0.1},
                                            "slow": {"optimizer.learning_rate": 0.001}})),
                   seeds=(0, 1, 2), name="t")
  runs = exp.runs()
  assert len(runs) == 12
  assert runs[0].grid == {"model": "shared_bottom", "opt": "fast", "seed": 0}
  assert runs[0].name == "model=shared_bottom,opt=fast,seed=0"
  assert runs[-1].config.optimizer.learning_rate == 0.001
  only = exp.runs(only={"model": ["mmoe"], "seed": ["1"]})
  assert [r.grid for r in only] == [{"model": "mmoe", "opt": "fast", "seed": 1},
                                    {"model": "mmoe", "opt": "slow", "seed": 1}]
  with pytest.raises(UnknownNameError, match="mmoe"):
    exp.runs(only={"model": ["mmo"]})
  with pytest.raises(UnknownNameError, match="Axes"):
    exp.runs(only={"modle": ["mmoe"]})


def test_parse_seeds():
  assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
  assert parse_seeds("0,2,5") == (0, 2, 5)
  with pytest.raises(ValueError):
    parse_seeds("a-b")
