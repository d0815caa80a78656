"""default_model_config / build_model: config keys and helpful errors."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import pytest

from mtrec_jax.models import build_model, default_model_config
from mtrec_jax.models.build import connection_fields
from mtrec_jax.registry import MODELS, UnknownNameError


def test_default_config_holds_every_connection_key():
  cfg = default_model_config()
  for name in MODELS.names():
    for key, default in connection_fields(MODELS.get(name)).items():
      assert cfg[key] == default, (name, key)
  for key in ("name", "tower_hidden", "dropout", "dtype", "bottom_hidden",
              "num_experts", "expert_hidden", "num_shared_experts",
              "num_task_experts", "num_levels", "cross_stitch_init",
              "num_heads"):
    assert key in cfg
  assert set(cfg.encoder) == {"num_layers", "num_heads", "hidden_dim",
                              "mlp_dim", "dropout", "attention_dropout",
                              "causal", "pooling", "layout"}
  assert cfg.name == "shared_bottom" and cfg.dtype == "float32"


def test_build_passes_only_the_modules_own_keys(features, make_config):
  cfg = make_config("mmoe", num_experts=5)
  cfg.expert_hidden = [16, 4]  # Lists from the command line become tuples.
  model = build_model(cfg, features, {"ctr": 1, "cvr": 1})
  conn = model.connection
  assert type(conn) is MODELS.get("mmoe")
  assert conn.num_tasks == 2 and conn.num_experts == 5
  assert conn.expert_hidden == (16, 4)
  assert not hasattr(conn, "bottom_hidden")
  assert model.task_dims == (("ctr", 1), ("cvr", 1))
  assert model.encoder.hidden_dim == 8 and model.encoder.dropout_rate == 0.0
  assert model.tower_hidden == (8,)
  hash(model)  # Flax fields must be hashable (no lists left).


def test_build_sets_dtype_and_dropout(features, make_config):
  model = build_model(make_config("cgc", dtype="bfloat16", dropout=0.25),
                      features, (("ctr", 1),))
  assert model.dtype == jnp.bfloat16 and model.connection.dtype == jnp.bfloat16
  assert model.dropout_rate == 0.25 and model.connection.dropout_rate == 0.25


def test_partial_config_takes_module_defaults(features):
  model = build_model({"name": "ple"}, features, {"ctr": 1})
  assert model.connection.num_levels == 2
  assert model.encoder == dataclasses.replace(model.encoder)


def test_unknown_model_name_suggests_close_names(features):
  with pytest.raises(UnknownNameError, match="'mmoe'") as err:
    build_model({"name": "mmo"}, features, {"ctr": 1})
  assert "mmo" in str(err.value)


@pytest.mark.parametrize("key, closest", [
    ("expert_hiden", "expert_hidden"),
    ("num_expert", "num_experts"),
    ("bogus_key", None),
])
def test_unknown_config_key_is_named(features, key, closest):
  cfg = {**default_model_config().to_dict(), key: 1}
  with pytest.raises(ValueError, match=f"'{key}'") as err:
    build_model(cfg, features, {"ctr": 1})
  if closest:
    assert f"'{closest}'" in str(err.value)


def test_unknown_encoder_key_is_named(features, make_config):
  cfg = make_config()
  cfg.encoder.unlock()
  cfg.encoder.num_layer = 2
  with pytest.raises(ValueError, match="'num_layer'.*'num_layers'"):
    build_model(cfg, features, {"ctr": 1})


def test_bad_dtype(features):
  with pytest.raises(ValueError, match="bfloat16"):
    build_model({"dtype": "float16"}, features, {"ctr": 1})
