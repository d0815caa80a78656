"""Experiments: a named base config plus a grid of axes, expanded into runs.

An experiment file in `experiments/` registers a function returning an
`Experiment`::

    @EXPERIMENTS.register("mmoe-synthetic")
    def get_experiment() -> Experiment:
      config = base_config(); ...
      return Experiment(config, axes=(Axis("model", "model.name",
                                           ("shared_bottom", "mmoe")),),
                        seeds=(0, 1, 2))

Each axis has a short name (used in run names and in ``result.json``'s
``grid``) and sets one config key, or, when its values are a mapping
``label -> {dotted key: value}``, several keys at once.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from mtrec_jax import config as config_lib, plugins
from mtrec_jax.registry import EXPERIMENTS, UnknownNameError, closest
from mtrec_jax.registry import unknown_name_message

ConfigDict = config_lib.ConfigDict
# Between a run's name and its config hash in its folder's name.
RUN_DIR_SEP = "@"


@dataclasses.dataclass(frozen=True)
class Axis:
  name: str
  key: str | None  # dotted config key; None when values are labelled overrides
  values: Sequence[Any] | Mapping[str, Mapping[str, Any]]

  def labels(self) -> list[Any]:
    return list(self.values.keys()) if isinstance(self.values, Mapping) else list(self.values)

  def overrides(self, label) -> dict[str, Any]:
    if isinstance(self.values, Mapping):
      return dict(self.values[label])
    return {self.key: label}


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of an experiment's grid: its axis values and resolved config."""
  experiment: str
  grid: dict  # axis name -> value, plus "seed"
  config: ConfigDict

  @property
  def name(self) -> str:
    parts = [f"{k}={v}" for k, v in self.grid.items()]
    return re.sub(r"[^A-Za-z0-9=.,_-]+", "_", ",".join(parts))

  @property
  def dir_name(self) -> str:
    """The run's folder under WORKDIR/<experiment>: `<name>@<config hash>`.

    The name alone is the grid point, which two configs share (e.g. another
    --set); with the hash, no run ever writes into another's folder.  Run
    names never hold '@' (`name` keeps only [A-Za-z0-9=.,_-]).
    """
    return f"{self.name}{RUN_DIR_SEP}{config_lib.config_hash(self.config)}"


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ConfigDict
  axes: tuple[Axis, ...] = ()
  seeds: tuple[int, ...] = (0,)
  name: str = ""
  description: str = ""
  # Optional: (result dict, dataset) -> dict of experiment-specific findings,
  # stored as result["report"] (e.g. learned vs true noise variances).
  report: Callable[[dict, Any], dict] | None = None
  # Metric keys for the printed table; empty = each task's first test metric
  # plus the mean task loss.
  table_metrics: tuple[str, ...] = ()

  def axis(self, name: str) -> Axis:
    for a in self.axes:
      if a.name == name:
        return a
    raise UnknownNameError(
        f"experiment {self.name!r} has no axis {name!r}. Axes: "
        f"{', '.join([a.name for a in self.axes] + ['seed'])}")

  def runs(self, *, overrides: Iterable[str] | Mapping[str, Any] = (),
           seeds: Sequence[int] | None = None,
           only: Mapping[str, Sequence[str]] | None = None) -> list[Run]:
    """Expands the grid; command-line overrides apply last, to every run.

    `only` keeps runs whose axis value (as text) is one of the given ones.
    Every run's config is resolved here, so a bad key fails before any run.
    """
    only = dict(only or {})
    for axis_name, wanted in only.items():
      if axis_name == "seed":
        continue
      labels = [str(v) for v in self.axis(axis_name).labels()]
      for w in wanted:
        if w not in labels:
          near = closest(w, labels)
          raise UnknownNameError(
              f"axis {axis_name!r} of experiment {self.name!r} has no value "
              f"{w!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
              + f" Values: {', '.join(labels)}")
    seeds = tuple(self.seeds if seeds is None else seeds)
    if "seed" in only:
      seeds = tuple(s for s in seeds if str(s) in only["seed"])
    cli = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    runs = []
    for combo in itertools.product(*[a.labels() for a in self.axes]):
      if any(str(v) not in only[a.name] for a, v in zip(self.axes, combo)
             if a.name in only):
        continue
      grid_overrides: dict[str, Any] = {}
      for a, v in zip(self.axes, combo):
        grid_overrides.update(a.overrides(v))
      base = config_lib.apply_overrides(self.config, grid_overrides)
      base = config_lib.apply_overrides(base, cli)
      for seed in seeds:
        cfg = config_lib.apply_overrides(base, {"seed": int(seed)})
        grid = {a.name: v for a, v in zip(self.axes, combo)}
        grid["seed"] = int(seed)
        runs.append(Run(self.name, grid, cfg))
    return runs


def load_experiments() -> None:
  """Imports the bundled `experiments` package so its files register (the
  `EXPERIMENTS` registry also does it on its first lookup)."""
  EXPERIMENTS.names()


def get_experiment(name: str) -> Experiment:
  """The registered experiment `name`, or, for ``my_pkg.module:NAME`` and
  ``path/to/file.py:NAME``, experiment NAME of that module (registered by
  it on import, else its attribute NAME: an `Experiment` or a function
  returning one; see `mtrec_jax.plugins`)."""
  if plugins.is_spec(name):
    return _from_spec(name)
  factory = EXPERIMENTS.get(name)
  exp = factory()
  doc = (factory.__doc__ or "").strip()
  return dataclasses.replace(exp, name=name, description=doc)


def _from_spec(spec: str) -> Experiment:
  module = plugins.import_spec_module(spec)
  name = spec.rpartition(":")[2]
  if name in EXPERIMENTS:
    return get_experiment(name)
  obj = getattr(module, name, None)
  exp = obj
  if callable(obj) and not isinstance(obj, Experiment):
    try:
      exp = obj()
    except Exception as e:  # the user's code: say where it failed
      raise plugins.PluginError(f"experiment {spec!r}: calling {name}() "
                                f"raised {plugins.describe(e)}") from None
    if not isinstance(exp, Experiment):
      raise TypeError(f"experiment {spec!r}: {name}() returned "
                      f"{type(exp).__name__}, not an Experiment")
  if not isinstance(exp, Experiment):
    defined = [k for k, v in vars(module).items() if isinstance(v, Experiment)]
    raise UnknownNameError(
        f"experiment {spec!r}: module {module.__name__} neither registers nor "
        f"defines {name!r}. " + unknown_name_message(
            "experiment", name, [*EXPERIMENTS.names(), *defined]))
  doc = (obj.__doc__ or "").strip() if callable(obj) else exp.description
  return dataclasses.replace(exp, name=name, description=doc)


def list_experiments() -> list[tuple[str, str]]:
  """(name, first docstring line) for every registered experiment."""
  out = []
  for name in EXPERIMENTS.names():
    doc = (EXPERIMENTS.get(name).__doc__ or "").strip().splitlines()
    out.append((name, doc[0] if doc else ""))
  return out


def parse_seeds(text: str) -> tuple[int, ...]:
  """'0-4' -> (0,1,2,3,4); '0,2,5' -> (0,2,5); '3' -> (3,)."""
  seeds: list[int] = []
  for part in text.split(","):
    part = part.strip()
    if re.fullmatch(r"\d+-\d+", part):
      lo, hi = map(int, part.split("-"))
      if hi < lo:
        raise ValueError(f"seed range {part!r} is empty; write low-high")
      seeds.extend(range(lo, hi + 1))
    elif re.fullmatch(r"\d+", part):
      seeds.append(int(part))
    else:
      raise ValueError(f"cannot read seeds {text!r}; use e.g. 0-4 or 0,2,5")
  return tuple(seeds)
