"""Config overrides, run identity (hashing), grids and seeds parsing."""
import json
import os
import subprocess
import sys

import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.experiment import Axis, Experiment, get_experiment, parse_seeds
from mtrec_jax.models.build import connection_fields
from mtrec_jax.registry import EXPERIMENTS, MODELS, UnknownNameError


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


def test_override_adds_a_declared_optional_key():
  """`Section.optional` keys (absent from the defaults so that stored hashes
  hold) can be added by `--set`, typed by their default; the live section
  and its snapshot agree on them."""
  base = config_lib.base_config()
  assert "attention" not in base.model.encoder
  cfg = config_lib.apply_overrides(base, ["model.encoder.attention=real_rows"])
  assert cfg.model.encoder.attention == "real_rows"
  assert config_lib.config_hash(cfg) != config_lib.config_hash(base)
  with pytest.raises(TypeError, match="model.encoder.attention"):
    config_lib.apply_overrides(base, ["model.encoder.attention=3"])
  with pytest.raises(UnknownNameError, match="model.encoder"):
    config_lib.apply_overrides(base, ["model.encoder.atention=real_rows"])
  live = config_lib.sections()["model"]
  snap = config_lib._from_snapshot(config_lib.section_snapshot()["model"])
  assert dict(snap.optional()) == dict(live.optional()) == {
      "encoder.attention": "dense"}


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
# this changes only on purpose (and with a store migration, results/store.py).
BASE_CONFIG_HASH = "e04e38ea3b339128"  # schema 6: train.compiler


def test_base_config_hash_is_stable():
  assert config_lib.config_hash(config_lib.base_config()) == BASE_CONFIG_HASH


def test_hash_covers_the_chosen_model_only():
  base = config_lib.apply_overrides(config_lib.base_config(),
                                    {"model.name": "shared_bottom"})
  h = config_lib.config_hash(base)
  # num_experts is MMoE's field: it cannot change a shared-bottom run ...
  assert config_lib.config_hash(
      config_lib.apply_overrides(base, {"model.num_experts": 9})) == h
  # ... but it is an MMoE run's, as is the shared bottom's own field.
  mmoe = config_lib.apply_overrides(base, {"model.name": "mmoe"})
  assert config_lib.config_hash(config_lib.apply_overrides(
      mmoe, {"model.num_experts": 9})) != config_lib.config_hash(mmoe)
  assert config_lib.config_hash(config_lib.apply_overrides(
      base, {"model.bottom_hidden": (7,)})) != h
  # Model-level keys count whatever the model.
  assert config_lib.config_hash(
      config_lib.apply_overrides(base, {"model.dropout": 0.5})) != h


def test_hash_covers_the_listed_aux_tasks_only():
  base = config_lib.base_config()
  h = config_lib.config_hash(base)
  assert config_lib.config_hash(config_lib.apply_overrides(
      base, {"aux.next_all.num_negatives": 7})) == h
  listed = config_lib.apply_overrides(base, {"aux.tasks": ("next_all",)})
  assert config_lib.config_hash(listed) != h
  assert config_lib.config_hash(config_lib.apply_overrides(
      listed, {"aux.next_all.num_negatives": 7})) != config_lib.config_hash(
          listed)
  assert config_lib.config_hash(config_lib.apply_overrides(
      listed, {"aux.kg.dim": 7})) == config_lib.config_hash(listed)


def test_hash_of_stored_form_equals_hash_of_config():
  """The results store keeps plain dicts (tuples as lists); they hash alike."""
  cfg = config_lib.apply_overrides(config_lib.base_config(),
                                   {"aux.tasks": ("next_all", "kg")})
  stored = json.loads(json.dumps(config_lib.to_dict(cfg)))
  assert config_lib.config_hash(stored) == config_lib.config_hash(cfg)


def test_hash_leaves_out_keeping_keys():
  base = config_lib.base_config()
  h = config_lib.config_hash(base)
  for key, value in (("train.keep_checkpoints", 9), ("train.mesh_data", 2),
                     ("log.wandb", True), ("log.wandb_project", "x")):
    assert config_lib.config_hash(config_lib.apply_overrides(
        base, {key: value})) == h, key


def _all_grid_hashes() -> dict[tuple[str, str], tuple[str, str]]:
  """(experiment, run) -> (model name, config hash) of every registered
  experiment's whole grid, expanded from scratch."""
  out = {}
  for name in EXPERIMENTS.names():
    for run in get_experiment(name).runs():
      out[(name, run.name)] = (run.config.model.name,
                               config_lib.config_hash(run.config))
  return out


def test_a_field_added_to_one_model_keeps_every_other_run_hash(monkeypatch):
  """Every registered experiment's grid, expanded again after a field is
  added to MMoE and a new model with its own field is registered: only the
  MMoE runs change (the new field is now part of what an MMoE run is)."""
  before = _all_grid_hashes()
  assert any(m == "mmoe" for m, _ in before.values())
  mmoe = MODELS.get("mmoe")
  patched = type("MMoEWithAField", (mmoe,),
                 {"__annotations__": {"new_test_field": int},
                  "new_test_field": 3, "__module__": __name__})
  brand_new = type("BrandNewModel", (MODELS.get("shared_bottom"),),
                   {"__annotations__": {"brand_new_width": int},
                    "brand_new_width": 5, "__module__": __name__})
  monkeypatch.setitem(MODELS._items, "mmoe", patched)
  monkeypatch.setitem(MODELS._items, "zz_brand_new", brand_new)
  monkeypatch.setitem(MODELS._info, "zz_brand_new", {})
  assert "new_test_field" in config_lib.base_config().model
  assert "brand_new_width" in config_lib.base_config().model
  after = _all_grid_hashes()
  assert after.keys() == before.keys()
  changed = {k for k in before if before[k] != after[k]}
  assert changed == {k for k, (m, _) in before.items() if m == "mmoe"}


def test_each_model_field_reaches_only_its_own_runs():
  """For every registered model: a stored config of any model gets every
  registered model's fields (the union section); changing the fields of one
  model changes the hash of that model's runs only."""
  base = config_lib.base_config()
  own = {name: set(connection_fields(MODELS.get(name)))
         for name in MODELS.names()}
  for chosen in MODELS.names():
    cfg = config_lib.apply_overrides(base, {"model.name": chosen})
    h = config_lib.config_hash(cfg)
    for other in MODELS.names():
      for field in sorted(own[other]):
        d = config_lib.to_dict(cfg)
        d["model"][field] = ["changed"]
        moved = config_lib.config_hash(d) != h
        assert moved == (field in own[chosen]), (chosen, other, field)


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


HEAVY = "sorted(m for m in ('flax', 'jax', 'optax') if m in sys.modules)"
# Every registered experiment's runs -> [config hash, plain config JSON].
IDENTITIES = """
import json
from mtrec_jax import config as config_lib
from mtrec_jax.experiment import get_experiment
from mtrec_jax.registry import EXPERIMENTS
def identities():
  return {f"{n}/{r.name}": [config_lib.config_hash(r.config), json.dumps(
              config_lib.to_dict(r.config), sort_keys=True)]
          for n in EXPERIMENTS.names() for r in get_experiment(n).runs()}
"""


def test_list_show_status_import_no_flax_jax_or_optax(tmp_path):
  """`mtrec list` (the CLI module, the config and every experiment file)
  loads neither flax nor jax nor optax: config.py imports no model code.
  `mtrec show` and `mtrec status` build configs and hashes from the section
  snapshot (`config.sections`), so they load none of them either, and give
  every registered experiment's runs the configs and hashes of the live
  registry (the snapshot is written here, by this process, which has the
  models loaded)."""
  code = ("import sys; from mtrec_jax import cli, experiment; "
          f"experiment.list_experiments(); print({HEAVY})")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr

  (tmp_path / f"{config_lib.section_snapshot_key()}.json").write_text(
      json.dumps(config_lib.section_snapshot()))
  code = "\n".join([
      "import json, sys", "from mtrec_jax import cli",
      "cli.main(['show', 'quickstart'])",
      f"cli.main(['status', 'quickstart', '--store', "
      f"{str(tmp_path / 'none.db')!r}])",
      IDENTITIES, f"print(json.dumps([{HEAVY}, identities()]))"])
  env = {**os.environ, "MTREC_SECTION_CACHE_DIR": str(tmp_path)}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, env=env)
  heavy, snapshot = json.loads(out.stdout.strip().splitlines()[-1])
  assert heavy == [], out.stderr
  assert "quickstart: 2 runs" in out.stdout
  live = {}
  exec(IDENTITIES, live)  # the same code, with the live registry
  assert snapshot == live["identities"]()


def test_keep_rules_pick_the_keys_of_a_run():
  pick = config_lib.Keep(always=("a",), chooser="name", default_choice="x",
                         owned={"x": ("p",), "y": ("q",)}, kind="model")
  section = {"a": 1, "name": "y", "p": 2, "q": 3, "sub": {"r": 4}}
  assert pick.apply(section) == {"a": 1, "q": 3}
  assert pick.apply({"a": 1, "p": 2, "q": 3}) == {"a": 1, "p": 2}
  with pytest.raises(UnknownNameError, match="unknown model 'z'"):
    pick.apply({"name": "z"})
  listed = config_lib.Keep(plain=True, chooser="tasks")
  section = {"tasks": ["m"], "only": False, "m": {"k": 1}, "c": {"k": 2}}
  assert listed.apply(section) == {"tasks": ["m"], "only": False,
                                   "m": {"k": 1}}


def test_freeze_is_one_hashable_key_per_value():
  """`config.freeze`, the cache key of dataset kwargs and strategy
  hyper-parameters: nested dicts, lists and tuples at every depth, dict order
  ignored, different values different keys."""
  value = {"b": [1, {"y": (2, 3), "x": [4]}], "a": "s"}
  key = config_lib.freeze(value)
  assert key == (("a", "s"), ("b", (1, (("x", (4,)), ("y", (2, 3))))))
  hash(key)
  reordered = {"a": "s", "b": [1, {"x": [4], "y": [2, 3]}]}
  assert config_lib.freeze(reordered) == key
  assert config_lib.freeze({**value, "a": "t"}) != key
  assert config_lib.freeze(7) == 7 and config_lib.freeze([]) == ()
  with pytest.raises(TypeError):  # an unhashable leaf stays unhashable
    hash(config_lib.freeze({"a": {1, 2}}))
