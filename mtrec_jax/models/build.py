"""Model config -> `MultiTaskModel`.

One flat model config serves every connection module: it holds the union of
all registered modules' hyper-parameters (read off their dataclass fields, so
a new module's keys appear without editing this file), and `build_model`
passes each module only the keys it declares.  A key no module uses is an
error naming the closest valid keys, so typos never pass silently.

The section is registered in `registry.CONFIG_SECTIONS` as "model": its
defaults, and its run identity (`model_keep`: the model-level keys and
the chosen model's own fields, so a field added to one model leaves every
other model's config hash unchanged).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax.numpy as jnp
import ml_collections

from mtrec_jax import config as config_lib
from mtrec_jax.models import sharing  # noqa: F401  (registers the connections)
from mtrec_jax.models.assembled import MultiTaskModel, task_dims_tuple
from mtrec_jax.models.encoder import EncoderConfig
from mtrec_jax.models.item_text import (ITEM_REPRS, TEXT_DEFAULTS, TextItems,
                                        check_choice, text_items)
from mtrec_jax.registry import CONFIG_SECTIONS, MODELS, closest
from mtrec_jax.specs import FeatureSpec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Connection fields that build_model sets itself rather than from a same-named
# config key ('dropout' feeds dropout_rate).
_SET_BY_BUILD = frozenset({"num_tasks", "dtype", "dropout_rate", "parent",
                           "name"})
# Model-level keys, with their defaults.
_MODEL_KEYS = {"name": "shared_bottom", "tower_hidden": (32,), "dropout": 0.0,
               "dtype": "float32", "task_inputs": {}, "features": ()}
# Optional model-level keys (issue 18, models/item_text.py): not in the
# default config, so the hash of every run without them is what it was
# (no store migration); a config that holds them (experiments/ml100k_text.py
# `with_text_keys`) is hashed with them.
_OPTIONAL_KEYS = {"item_repr": "id", "text": dict(TEXT_DEFAULTS)}
# Config key -> EncoderConfig field.
_ENCODER_KEYS = {"num_layers": "num_layers", "num_heads": "num_heads",
                 "hidden_dim": "hidden_dim", "mlp_dim": "mlp_dim",
                 "dropout": "dropout_rate",
                 "attention_dropout": "attention_dropout_rate",
                 "causal": "causal", "pooling": "pooling",
                 "layout": "layout"}
# Optional encoder keys (issue 15): not in the default config, so stored
# runs keep their hashes; a config that sets one (an experiment's, or
# `--set`, through `model_optional`) is hashed with it.
_OPTIONAL_ENCODER_KEYS = {"attention": "attention"}


def connection_fields(cls) -> dict[str, Any]:
  """The config-settable fields of a registered module -> their defaults."""
  if not dataclasses.is_dataclass(cls):
    return {}
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.name not in _SET_BY_BUILD
          and f.default is not dataclasses.MISSING}


def connection_defaults() -> dict[str, Any]:
  """Union of every registered module's config keys with their defaults."""
  union: dict[str, Any] = {}
  owner: dict[str, str] = {}
  for name in MODELS.names():
    for key, default in connection_fields(MODELS.get(name)).items():
      if key in union and union[key] != default:
        raise ValueError(f"config key {key!r} has default {union[key]!r} in "
                         f"{owner[key]!r} but {default!r} in {name!r}; "
                         "connection modules must agree on shared defaults")
      if key in _MODEL_KEYS or key == "encoder":
        raise ValueError(f"connection {name!r} field {key!r} clashes with a "
                         "model-level config key; rename the field")
      union.setdefault(key, default)
      owner.setdefault(key, name)
  return union


def default_model_config() -> ml_collections.ConfigDict:
  """The model config with every key any registered model understands.

  `dropout` feeds both the towers and the connection's `dropout_rate`; the
  top-level `num_heads` is cross_attention's, the sequence encoder's is
  `encoder.num_heads`.
  """
  enc = EncoderConfig()
  encoder = {key: getattr(enc, field) for key, field in _ENCODER_KEYS.items()}
  return ml_collections.ConfigDict(_plain({
      **_MODEL_KEYS,
      "encoder": encoder,
      **connection_defaults(),
  }))


def model_keep() -> config_lib.Keep:
  """The model keys that can change a run: the model-level ones, the
  encoder's and the chosen model's own fields (not other models')."""
  return config_lib.Keep(
      always=(*_MODEL_KEYS, *_OPTIONAL_KEYS, "encoder"), chooser="name",
      default_choice=_MODEL_KEYS["name"], kind="model",
      owned={name: tuple(connection_fields(MODELS.get(name)))
             for name in MODELS.names()})


def model_optional() -> dict[str, Any]:
  """The optional encoder keys `--set` may add, with their defaults."""
  enc = EncoderConfig()
  return {f"encoder.{key}": getattr(enc, field)
          for key, field in _OPTIONAL_ENCODER_KEYS.items()}


CONFIG_SECTIONS.register("model")(config_lib.Section(
    defaults=default_model_config, keep=model_keep,
    optional=model_optional))


def _plain(value: Any) -> Any:
  """Fresh copies with lists -> tuples (flax fields must be hashable)."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _as_dict(cfg: Mapping[str, Any] | ml_collections.ConfigDict
             ) -> dict[str, Any]:
  if isinstance(cfg, (ml_collections.ConfigDict,
                      ml_collections.FrozenConfigDict)):
    return cfg.to_dict()
  return dict(cfg)


def _check_keys(where: str, given: Iterable[str], valid: Iterable[str]) -> None:
  valid = sorted(valid)
  for key in given:
    if key not in valid:
      close = closest(key, valid)
      hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
      raise ValueError(f"unknown {where} key {key!r}.{hint} Valid keys: "
                       f"{', '.join(valid)}.")


def encoder_config(cfg: Mapping[str, Any]) -> EncoderConfig:
  """The `encoder` sub-config -> `EncoderConfig` (unknown keys raise)."""
  cfg = _as_dict(cfg)
  keys = {**_ENCODER_KEYS, **_OPTIONAL_ENCODER_KEYS}
  _check_keys("model.encoder config", cfg, keys)
  return EncoderConfig(**{keys[k]: v for k, v in cfg.items()})


def build_model(model_cfg: Mapping[str, Any] | ml_collections.ConfigDict,
                features: Iterable[FeatureSpec],
                task_dims: Mapping[str, int] | Iterable[tuple[str, int]],
                aux_tasks: tuple = (), item_text=None) -> MultiTaskModel:
  """Builds the `MultiTaskModel` that `model_cfg` describes.

  Args:
    model_cfg: a (possibly partial) `default_model_config()`; missing keys
      take the module defaults.
    features: the dataset's feature specs.
    task_dims: {task: output width} or (task, width) pairs, in task order.
    aux_tasks: auxiliary tasks (`tasks.auxiliary.build_aux_tasks`).
    item_text: for ``model.item_repr`` 'text' or 'id+text', the dataset's
      `data.item_text.ItemText` (`models.item_text.for_run` builds it) or a
      ready `models.item_text.TextItems`; ignored for 'id'.
  """
  cfg = _as_dict(model_cfg)
  _check_keys("model config", cfg,
              set(_MODEL_KEYS) | set(_OPTIONAL_KEYS) | {"encoder"}
              | set(connection_defaults()))
  cfg = {**_MODEL_KEYS, **_OPTIONAL_KEYS, **cfg}
  cls = MODELS.get(cfg["name"])  # Unknown names list the closest ones.
  if cfg["dtype"] not in DTYPES:
    raise ValueError(f"model dtype must be one of {sorted(DTYPES)}, got "
                     f"{cfg['dtype']!r}")
  dtype = DTYPES[cfg["dtype"]]
  tasks = task_dims_tuple(task_dims)
  kwargs = {key: _plain(cfg[key]) for key in connection_fields(cls)
            if key in cfg}
  if "dropout_rate" in {f.name for f in dataclasses.fields(cls)}:
    kwargs["dropout_rate"] = float(cfg["dropout"])
  # With no tasks (pre-training on auxiliary tasks) the connection is
  # never called; it is built for one task only to exist.
  connection = cls(num_tasks=max(len(tasks), 1), dtype=dtype, **kwargs)
  items = None
  text_items(None, {"item_repr": "id", "text": cfg["text"]})  # checks keys
  check_choice("model.item_repr", cfg["item_repr"], ITEM_REPRS)
  if cfg["item_repr"] != "id" and item_text is None:
    raise ValueError(f"model.item_repr={cfg['item_repr']!r} needs the item "
                     "texts: build the model with item_text="
                     "models.item_text.for_run(config, dataset) (the trainer "
                     "does), or set model.item_repr='id'")
  if isinstance(item_text, TextItems):
    items = item_text if cfg["item_repr"] != "id" else None
  elif item_text is not None:
    items = text_items(item_text, cfg)
  task_inputs, excluded = _task_inputs(cfg["task_inputs"], tasks)
  features = tuple(features)
  excluded = _unread_features(_plain(cfg["features"]), features, excluded)
  return MultiTaskModel(
      features=tuple(features), task_dims=tasks, connection=connection,
      tower_hidden=_plain(cfg["tower_hidden"]),
      dropout_rate=float(cfg["dropout"]),
      encoder=encoder_config(cfg.get("encoder", {})), dtype=dtype,
      task_inputs=task_inputs, excluded=excluded, aux_tasks=tuple(aux_tasks),
      item_text=items)


def _unread_features(read, features, excluded) -> tuple[str, ...]:
  """`excluded` plus the features outside `model.features` (when given)."""
  if not read:
    return excluded
  names = [f.name for f in features]
  for name in read:
    if name not in names:
      raise ValueError(f"model.features names {name!r}, which is not a "
                       f"feature of the dataset; features: {', '.join(names)}")
  return tuple(sorted(set(excluded) | {n for n in names if n not in read}))


def _task_inputs(spec: Mapping[str, Any], tasks
                 ) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
  """`model.task_inputs` {task: features} -> per-task tuples in task order,
  plus the private features of tasks not trained in this run (read by no
  one, so they never leak into the shared input)."""
  spec = {str(k): tuple(_plain(v)) for k, v in _as_dict(spec).items()}
  names = [t for t, _ in tasks]
  per_task = tuple(spec.get(t, ()) for t in names)
  excluded = tuple(sorted({f for t, fs in spec.items() if t not in names
                           for f in fs} - {f for fs in per_task for f in fs}))
  return (per_task if any(per_task) else ()), excluded
