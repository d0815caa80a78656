"""Config helpers: defaults, type-checked overrides, run identity, JSON.

Configs are `ml_collections.ConfigDict`s.  Overrides arrive as ``key=value``
strings from the command line (``--set model.num_experts=8``) or as dicts from
an experiment grid; both go through `apply_overrides`, which only changes keys
that already exist and keeps their type, so a typo is an error that names the
closest valid keys instead of a silently ignored setting.

Run identity (`config_hash`) is canonical: it covers exactly the keys that
can change what a run computes.  The model section holds every registered
model's fields (so ``--set model.num_experts=8`` works whatever the model),
but a run's identity holds only the chosen model's; likewise only the
auxiliary tasks that ``aux.tasks`` lists, and only the chosen strategy's
``strategy.hparams`` (the only ones set).  Adding a field to one model, or a
new auxiliary task, leaves every other run's hash as it was.  The sections
whose keys another layer declares ("model", "aux") are `Section`s registered
in `registry.CONFIG_SECTIONS` by that layer, so this module imports no model
code (`mtrec list` never loads flax).  A section's defaults and its identity
rule (`Keep`) are plain data, so a snapshot of them (`section_snapshot`,
keyed by the package's source) lets `mtrec show` and `mtrec status` build
configs and hashes without importing the model code (or flax, jax, optax).

A new key does change the hash of the runs it is part of (the chosen model's
runs for a model field; every run for a key of a shared section such as
``model.encoder`` or ``train``).  When its default computes what ran before,
the stored runs keep matching through a store migration: the key and that
default go into `results.store.ADDED_KEYS`, with a ``_rekey()`` migration.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from mtrec_jax.registry import (CONFIG_SECTIONS, UnknownNameError, closest,
                                unknown_name_message)

ConfigDict = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Keep:
  """Which keys of a section a run's identity covers, as plain data.

  A key counts when it is one of `always`; or (`plain`) its value is not a
  sub-section; or the value of the `chooser` key picks it: a string value
  (a name of `kind`, `default_choice` when the key is absent) picks the
  keys `owned[value]` (an unknown name is an error listing the close ones),
  a list value picks the keys it lists.
  """
  always: tuple[str, ...] = ()
  plain: bool = False
  chooser: str = ""
  default_choice: Any = None
  owned: Mapping[str, tuple[str, ...]] | None = None
  kind: str = "name"

  def apply(self, section: dict) -> dict:
    chosen = (section.get(self.chooser, self.default_choice)
              if self.chooser else None)
    if isinstance(chosen, str):
      owned = self.owned or {}
      if chosen not in owned:
        raise UnknownNameError(unknown_name_message(self.kind, chosen, owned))
      picked = set(owned[chosen])
    else:
      picked = set(chosen or ())
    return {k: v for k, v in section.items()
            if k in self.always or k in picked
            or (self.plain and not isinstance(v, dict))}


@dataclasses.dataclass(frozen=True)
class Section:
  """A config section declared by the layer that reads it.

  Attributes:
    defaults: () -> the section's keys with their defaults.
    keep: () -> the `Keep` rule of the keys that can change a run (what
      `config_hash` covers); called on each use, so it sees every
      registration made so far.
    optional: () -> keys the defaults leave out, so that stored runs keep
      their hashes, which `--set` may still add ({dotted key below the
      section: its default, the type a value is coerced to}).
  """
  defaults: Callable[[], Mapping[str, Any]]
  keep: Callable[[], Keep]
  # A factory, not a class attribute (one description in the docs site).
  optional: Callable[[], Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: dict)

  def identity(self, section: dict, config: dict) -> dict:
    """The part of `section` (a plain dict) that can change a run; `config`
    (the whole plain config) is for rules that read other sections."""
    del config
    return self.keep().apply(section)


# ----------------------------------------------------------------------------
# Section snapshots: the sections as data, so that building a config and its
# hash needs no model code.  A snapshot is keyed by the source of every module
# of this package (and the Python version): any code change makes a new one.
# It is used only while the modules that register the sections are not
# imported; once they are (training, tests that register models), the live
# registry is read.  Set MTREC_SECTION_CACHE=0 to never use one.


def _section_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      "MTREC_SECTION_CACHE_DIR",
      "~/.cache/mtrec_jax/config_sections")).expanduser()


def section_snapshot_key() -> str:
  """sha256 of the Python version and every ``.py`` file of the package."""
  root = pathlib.Path(__file__).resolve().parent
  h = hashlib.sha256(sys.version.encode())
  for path in sorted(root.rglob("*.py")):
    h.update(str(path.relative_to(root)).encode() + b"\0")
    h.update(path.read_bytes() + b"\0")
  return h.hexdigest()


def _encode(value: Any) -> Any:
  """JSON with tuples kept apart from lists (config values are both)."""
  if isinstance(value, (ConfigDict, ml_collections.FrozenConfigDict)):
    value = value.to_dict()
  if isinstance(value, tuple):
    return {"__tuple__": [_encode(v) for v in value]}
  if isinstance(value, list):
    return [_encode(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _encode(v) for k, v in value.items()}
  return value


def _decode(value: Any) -> Any:
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if isinstance(value, dict):
    if set(value) == {"__tuple__"}:
      return tuple(_decode(v) for v in value["__tuple__"])
    return {k: _decode(v) for k, v in value.items()}
  return value


def section_snapshot() -> dict:
  """Every registered section as data: {name: {"defaults", "keep"}}
  (imports the modules that register them)."""
  out = {}
  for name in CONFIG_SECTIONS.names():
    section = CONFIG_SECTIONS.get(name)
    out[name] = _encode({"defaults": dict(section.defaults()),
                         "keep": dataclasses.asdict(section.keep()),
                         "optional": dict(section.optional())})
  return out


def _from_snapshot(data: dict) -> Section:
  keep = _decode(data["keep"])
  keep = Keep(**{**keep, "always": tuple(keep["always"])})
  optional = _decode(data.get("optional", {}))
  return Section(defaults=lambda: _decode(data["defaults"]),
                 keep=lambda: keep, optional=lambda: optional)


_SNAPSHOT: dict[str, Section] | None = None


def sections() -> dict[str, Section]:
  """The registered config sections by name: live from the registry when
  the modules that register them are imported (or no snapshot can be used),
  else from the snapshot of this source, which is written on first use."""
  global _SNAPSHOT
  if (CONFIG_SECTIONS.is_loaded()
      or os.environ.get("MTREC_SECTION_CACHE") == "0"):
    return {n: CONFIG_SECTIONS.get(n) for n in CONFIG_SECTIONS.names()}
  if _SNAPSHOT is None:
    path = _section_cache_dir() / f"{section_snapshot_key()}.json"
    try:
      data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet (or unreadable): build it
      data = section_snapshot()
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
      except OSError:  # a read-only cache only costs the speed-up
        pass
      return {n: CONFIG_SECTIONS.get(n) for n in CONFIG_SECTIONS.names()}
    _SNAPSHOT = {n: _from_snapshot(d) for n, d in data.items()}
  return dict(_SNAPSHOT)


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
  # Auxiliary tasks on the shared encoder (tasks/auxiliary.py): aux.tasks
  # names them (mim, cl, kg); aux.<name>.* are their settings; aux.only
  # trains them without the dataset's tasks (pre-training).
  c.aux = ConfigDict(dict(sections()["aux"].defaults()))
  # A run directory (or its params/ folder) whose parameters initialise
  # every matching parameter of this run (pre-train then fine-tune).
  c.init_from = ""
  c.init_scope = ("shared/feature_encoder",)  # path prefixes; "" = all
  # Every registered model's keys (models/build.py); a run's identity holds
  # the model-level ones and the chosen model's own.
  c.model = ConfigDict(dict(sections()["model"].defaults()))
  c.strategy = ConfigDict()
  c.strategy.name = "mean"
  c.strategy.mode = ""  # "" = the strategy's default; "params" or "rep"
  # The Gramian "gramian" strategies see in rep mode (train/step.py,
  # make_train_step): "rows" (the representation Jacobian's) or "batch_sum"
  # (LibMTL's rep_grad: gradients summed over the batch first).
  c.strategy.rep_gramian = "rows"
  c.strategy.hparams = ConfigDict()
  c.optimizer = ConfigDict()
  # Any optax optimizer by its optax name (adam, adamw, sgd, lion, ...; see
  # train/optim.py), with optax's defaults but for the keys below.
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"  # constant | cosine | warmup_cosine
  c.optimizer.warmup_steps = 0
  # Passed to the optimizers whose optax signature takes them (weight_decay:
  # adamw, lion, lamb, ...; momentum: sgd, rmsprop, lars, ...; 0 = none).
  c.optimizer.weight_decay = 0.0
  c.optimizer.momentum = 0.9
  # Adam's moment decay rates, for adam and adamw only (optax's defaults;
  # SASRec's reference uses b2 = 0.98).
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
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
  # Where dropout masks draw their random bits: "threefry" (JAX's keys) or
  # "hash" (a counter hash, much cheaper on CPU; other masks, the same
  # distribution).  See train/dropout_bits.py.
  c.train.dropout_bits = "threefry"
  # XLA compile preset of the training step: "default" (XLA's own options)
  # or "cpu_fast" (CPU options that run our sequence models faster; the
  # same math, other rounding).  See train/compiler.py.
  c.train.compiler = "default"
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
# only in them are the same run to the results store.  A section name drops
# the whole section.
NOT_HASHED = ("train.checkpoint_every", "train.checkpoint_minutes",
              "train.keep_checkpoints", "train.mesh_data", "train.mesh_model",
              "train.shard_embeddings", "log")


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


_MISSING = object()


def _optional_default(key: str) -> Any:
  """The default of `key` if its section declares it optional, else
  `_MISSING`."""
  section, _, rest = key.partition(".")
  declared = sections().get(section)
  if declared is None or not rest:
    return _MISSING
  return dict(declared.optional()).get(rest, _MISSING)


def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any] | Iterable[str]
                    ) -> ConfigDict:
  """Returns a copy of `config` with dotted-key overrides applied.

  `overrides` is a mapping ``{"model.num_experts": 8}`` or a list of
  ``"key=value"`` strings.  Keys under ``strategy.hparams`` may be new (each
  strategy has its own keyword arguments, checked when it is built), and so
  may a section's optional keys (`Section.optional`, typed by their
  default); every other key must exist and keeps its type.
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
    optional = _optional_default(key)
    node, leaf = _parent_and_leaf(
        config, key, create_ok=open_section or optional is not _MISSING)
    if leaf in node:
      value = _coerce(node[leaf], value, key)
    elif optional is not _MISSING:
      value = _coerce(optional, value, key)
    elif isinstance(value, list):
      value = tuple(value)
    with node.ignore_type():
      node[leaf] = value
  return config


def to_dict(config: ConfigDict) -> dict:
  """A JSON-ready plain dict (tuples become lists)."""
  return json.loads(config.to_json(sort_keys=True))


def freeze(value: Any) -> Any:
  """A hashable form of a plain config value, for cache keys: dicts become
  tuples of (key, value) pairs sorted by key, lists and tuples tuples, at
  every depth; anything else is returned as is (an unhashable leaf still
  fails `hash`)."""
  if isinstance(value, Mapping):
    return tuple(sorted((k, freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(freeze(v) for v in value)
  return value


def _plain_dict(config: ConfigDict | Mapping[str, Any]) -> dict:
  if isinstance(config, (ConfigDict, ml_collections.FrozenConfigDict)):
    return to_dict(config)
  return json.loads(json.dumps(config, sort_keys=True))


def identity(config: ConfigDict | Mapping[str, Any]) -> dict:
  """The part of a config that can change a run, as a plain dict: all of it
  but the seed, `NOT_HASHED`, and the keys each registered `Section` leaves
  out (other models' fields, unlisted auxiliary tasks).

  `config` is a ConfigDict or its plain-dict form (as the results store
  keeps it).
  """
  d = _plain_dict(config)
  d.pop("seed", None)
  for key in NOT_HASHED:
    section, _, leaf = key.rpartition(".")
    if section:
      node = d.get(section)
      if isinstance(node, dict):
        node.pop(leaf, None)
    else:
      d.pop(leaf, None)
  for name, section in sections().items():
    if isinstance(d.get(name), dict):
      d[name] = section.identity(d[name], d)
  return d


def config_hash(config: ConfigDict | Mapping[str, Any]) -> str:
  """A stable 16-hex-digit hash of `identity(config)`: runs that differ only
  in their seed (or in keys that cannot change them) share it, so a results
  store can find and group them."""
  blob = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:16]
