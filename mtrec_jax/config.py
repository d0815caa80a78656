"""Config helpers: defaults, type-checked overrides, hashing, JSON.

Configs are `ml_collections.ConfigDict`s.  Overrides arrive as ``key=value``
strings from the command line (``--set model.num_experts=8``) or as dicts from
an experiment grid; both go through `apply_overrides`, which only changes keys
that already exist and keeps their type, so a typo is an error that names the
closest valid keys instead of a silently ignored setting.
"""
from __future__ import annotations

import ast
import hashlib
import json
from typing import Any, Iterable, Mapping

import ml_collections

from mtrec_jax.models.auxiliary import default_aux_config
from mtrec_jax.models.build import default_model_config
from mtrec_jax.registry import UnknownNameError, closest

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
  """The keys every run has; experiments start from this and change values."""
  c = ConfigDict()
  c.seed = 0
  # The dataset: `name` picks a registered builder; every other key is passed
  # to it as a keyword argument (so each experiment adds the keys it needs),
  # except `storage`: synthetic generators run in 'memory' or are read back
  # from their prepared 'array_record' copy (real datasets always are).
  c.data = ConfigDict({"name": "mmoe_synthetic", "storage": "memory"})
  c.tasks = ()  # names of the dataset's tasks to train; empty = all of them
  # Auxiliary tasks on the shared encoder (models/auxiliary.py): aux.tasks
  # names them (mim, cl, kg); aux.<name>.* are their settings; aux.only
  # trains them without the dataset's tasks (pre-training).
  c.aux = ConfigDict(default_aux_config())
  # A run directory (or its params/ folder) whose parameters initialise
  # every matching parameter of this run (pre-train then fine-tune).
  c.init_from = ""
  c.init_scope = ("shared/feature_encoder",)  # path prefixes; "" = all
  c.model = default_model_config()
  c.strategy = ConfigDict()
  c.strategy.name = "mean"
  c.strategy.mode = ""  # "" = the strategy's default; "params" or "rep"
  c.strategy.hparams = ConfigDict()
  c.optimizer = ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw | sgd
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"  # constant | cosine | warmup_cosine
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0  # adamw only
  c.optimizer.momentum = 0.9  # sgd only
  c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping
  c.train = ConfigDict()
  c.train.batch_size = 128
  c.train.num_steps = 1000
  c.train.eval_every = 200
  c.train.eval_batch_size = 1024
  c.train.log_every = 50
  # How params-mode per-task gradients run their K backward passes: "vmap",
  # "unrolled", or "auto" (unrolled on CPU, where it measured faster;
  # vmap on accelerators).  See benchmarks/strategies.py.
  c.train.jacobian_engine = "auto"
  # Model selection on validation only: "val/loss" is the mean of the task
  # losses; or "val/<task>/<metric>".  patience = evaluations without
  # improvement before stopping early (0 = never stop early).
  c.train.selection_metric = "val/loss"
  c.train.patience = 0
  # Checkpoints in <run dir>/checkpoints/, for `mtrec run --resume`: one
  # every checkpoint_every steps (0 = at each evaluation), one whenever
  # checkpoint_minutes have passed since the last (0 = no timed ones), one
  # at the last step; the last keep_checkpoints are kept, and the best by
  # selection_metric (keep_checkpoints 0 = no checkpoints).  They do not
  # change results, so config_hash leaves them out (see NOT_HASHED).
  c.train.checkpoint_every = 0
  c.train.checkpoint_minutes = 0.0
  c.train.keep_checkpoints = 2
  # Data parallelism (train/parallel.py): the batch is split over a mesh
  # axis "data" of mesh_data devices (0 = all devices / mesh_model), and
  # with shard_embeddings the embedding tables over an axis "model" of
  # mesh_model devices.  One device gives exactly the single-device numbers;
  # more give them up to float rounding, so these keys are not hashed.
  c.train.mesh_data = 0
  c.train.mesh_model = 1
  c.train.shard_embeddings = False
  # Logging (results/loggers.py): TensorBoard event files in
  # <run dir>/tensorboard/; Weights & Biases when log.wandb (pip install
  # wandb), "offline" unless wandb_mode = "online".  Not hashed.
  c.log = ConfigDict()
  c.log.tensorboard = True
  c.log.wandb = False
  c.log.wandb_project = "mtrec-jax"
  c.log.wandb_entity = ""  # "" = the W&B default entity
  c.log.wandb_mode = "offline"  # offline | online | disabled
  return c


# Keys that change how a run is kept, not what it computes: runs that differ
# only in them are the same run to the results store.
NOT_HASHED = ("train.checkpoint_every", "train.checkpoint_minutes",
              "train.keep_checkpoints", "train.mesh_data", "train.mesh_model",
              "train.shard_embeddings", "log.tensorboard", "log.wandb",
              "log.wandb_project", "log.wandb_entity", "log.wandb_mode")


# Keys added after results were stored, with the default they were added
# with: config_hash leaves a key out while it holds that default, so runs
# stored before it existed (which computed exactly that) keep their hashes.
HASHED_WHEN_CHANGED = {"aux.next_all.num_negatives": 100}


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  """All dotted leaf keys of a config (sub-dicts are descended)."""
  keys = []
  for k, v in config.items():
    path = f"{prefix}{k}"
    if isinstance(v, ConfigDict) and len(v):
      keys.extend(flat_keys(v, path + "."))
    else:
      keys.append(path)
  return keys


def _parent_and_leaf(config: ConfigDict, key: str, *, create_ok: bool):
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ConfigDict) or part not in node:
      raise UnknownNameError(_unknown_key_message(config, key))
    node = node[part]
  leaf = parts[-1]
  if not isinstance(node, ConfigDict):
    raise UnknownNameError(_unknown_key_message(config, key))
  if leaf not in node and not create_ok:
    raise UnknownNameError(_unknown_key_message(config, key))
  return node, leaf


def _unknown_key_message(config: ConfigDict, key: str) -> str:
  keys = flat_keys(config)
  close = closest(key, keys, n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return f"unknown config key {key!r}.{hint}"


def parse_value(text: str) -> Any:
  """Parses a command-line value: Python literals, else the raw string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(old: Any, new: Any, key: str) -> Any:
  """Converts `new` to the type of `old`, or raises naming the key."""
  if old is None or new is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
  elif isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
    return new
  elif isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
    return float(new)
  elif isinstance(old, str) and isinstance(new, str):
    return new
  elif isinstance(old, (tuple, list)):
    if isinstance(new, (int, float, str)) and not isinstance(new, bool):
      new = (new,)
    if isinstance(new, (tuple, list)):
      return tuple(new)
  elif isinstance(old, ConfigDict) and isinstance(new, Mapping):
    return ConfigDict(dict(new))
  raise TypeError(f"config key {key!r} is {type(old).__name__} "
                  f"(now {old!r}); cannot set it to {new!r} "
                  f"({type(new).__name__})")


def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any] | Iterable[str]
                    ) -> ConfigDict:
  """Returns a copy of `config` with dotted-key overrides applied.

  `overrides` is a mapping ``{"model.num_experts": 8}`` or a list of
  ``"key=value"`` strings.  Keys under ``strategy.hparams`` may be new (each
  strategy has its own keyword arguments, checked when it is built); every
  other key must exist and keeps its type.
  """
  if not isinstance(overrides, Mapping):
    pairs = {}
    for item in overrides:
      if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value "
                         f"(e.g. model.num_experts=8)")
      k, v = item.split("=", 1)
      pairs[k.strip()] = parse_value(v.strip())
    overrides = pairs
  config = ConfigDict(config.to_dict())
  for key, value in overrides.items():
    open_section = key.startswith("strategy.hparams.")
    node, leaf = _parent_and_leaf(config, key, create_ok=open_section)
    if leaf in node:
      value = _coerce(node[leaf], value, key)
    elif isinstance(value, list):
      value = tuple(value)
    with node.ignore_type():
      node[leaf] = value
  return config


def to_dict(config: ConfigDict) -> dict:
  """A JSON-ready plain dict (tuples become lists)."""
  return json.loads(config.to_json(sort_keys=True))


def config_hash(config: ConfigDict) -> str:
  """A stable hash of everything but the seed, `NOT_HASHED` and the
  `HASHED_WHEN_CHANGED` keys at their defaults (runs that differ only in
  their seed share it, so a results store can group them)."""
  d = to_dict(config)
  d.pop("seed", None)
  for key, default in HASHED_WHEN_CHANGED.items():
    *path, leaf = key.split(".")
    node = d
    for part in path:
      node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict) and leaf in node and node[leaf] == default:
      del node[leaf]
  for key in NOT_HASHED:
    section, _, leaf = key.rpartition(".")
    d.get(section, {}).pop(leaf, None)
    if d.get(section) == {}:  # (log.*) hashes as before the section existed
      del d[section]
  blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:16]
