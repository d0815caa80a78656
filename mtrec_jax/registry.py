"""Name -> builder registries with helpful errors: every extension point.

Every pluggable piece (dataset, model, weighting strategy, metric, optimizer,
config section, experiment; the auxiliary tasks too) is registered under a
lowercase name with a decorator, so adding one is a new file plus one
decorator line.  Looking up an unknown name raises `UnknownNameError` listing
the closest valid names.

A registration may carry flags (``@DATASETS.register("x", storable=True)``),
read back with `Registry.info` and filtered with ``names(storable=True)``, so
a property of an entry is declared where the entry is, not in a list kept by
hand elsewhere.

A registry knows the package whose modules fill it and imports it on the
first lookup (the way plug-in entry points load), so this module and the
config code need not import the models, datasets or experiments themselves:
`mtrec list` imports only the experiments, and never flax.  The first
lookup in any registry also loads the installed plug-ins
(`mtrec_jax.plugins`: entry points of group ``mtrec_jax.plugins``), so
their entries join the bundled ones.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import sys
from typing import Any, Callable, Generic, Iterator, TypeVar

from mtrec_jax.plugins import involved, load_plugins

T = TypeVar("T")


class UnknownNameError(KeyError):
  """An unknown registry name or config key; the message lists close matches."""

  def __str__(self) -> str:  # KeyError quotes its message; we do not want that.
    return str(self.args[0]) if self.args else ""


def closest(name: str, choices, n: int = 3) -> list[str]:
  """The valid names closest to `name` (difflib ratio), best first."""
  choices = sorted(map(str, choices))
  found = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
  if not found:  # Fall back to substring matches, e.g. 'mmo' -> 'mmoe'.
    found = [c for c in choices if name.lower() in c.lower()][:n]
  return found


def unknown_name_message(kind: str, name: str, choices) -> str:
  close = closest(name, choices)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return (f"unknown {kind} {name!r}.{hint} "
          f"Valid {kind} names: {', '.join(sorted(map(str, choices)))}.")


def _origin(obj: Any) -> str:
  """Where a registered object was defined: 'module.qualname'."""
  return ".".join(filter(None, (getattr(obj, "__module__", None),
                                getattr(obj, "__qualname__", None)))) or repr(obj)


class Registry(Generic[T]):
  """A named collection of builders of one kind.

  `packages`: modules imported on the first lookup (`get`, `names`, `in`,
  iteration), because importing them runs their registration decorators.
  """

  def __init__(self, kind: str, packages: tuple[str, ...] = ()):
    self.kind = kind
    self._items: dict[str, T] = {}
    self._info: dict[str, dict[str, Any]] = {}
    self._packages = tuple(packages)
    self._loaded = not self._packages

  def _load(self) -> None:
    if not self._loaded:
      self._loaded = True  # first: a package that looks itself up is not re-run
      for package in self._packages:
        importlib.import_module(package)
    load_plugins()  # once per process; raises for a broken one

  def is_loaded(self) -> bool:
    """Whether the registry must be read live: its packages were looked up
    here or imported elsewhere (their registrations then ran), or code
    outside this package may register entries (`plugins.involved`), which
    the config-section snapshot does not cover."""
    return (self._loaded or any(p in sys.modules for p in self._packages)
            or involved())

  def register(self, name: str, **info: Any) -> Callable[[T], T]:
    """Decorator: `@MODELS.register("mmoe")`; keyword flags go to `info`."""
    if name != name.lower():
      raise ValueError(f"{self.kind} names are lowercase, got {name!r}")

    def decorate(obj: T) -> T:
      if name in self._items and self._items[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice (by "
                         f"{_origin(self._items[name])} and {_origin(obj)}); "
                         f"rename one")
      self._items[name] = obj
      self._info[name] = dict(info)
      return obj

    return decorate

  def get(self, name: str) -> T:
    self._load()
    try:
      return self._items[name]
    except KeyError:
      raise UnknownNameError(
          unknown_name_message(self.kind, name, self._items)) from None

  __getitem__ = get  # registry[name], as a read-only mapping

  def __len__(self) -> int:
    self._load()
    return len(self._items)

  def info(self, name: str) -> dict[str, Any]:
    """The flags `name` was registered with (unknown names raise)."""
    self.get(name)
    return dict(self._info[name])

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    """Names in registration order, as a dict's keys (`names()` sorts)."""
    return iter(self.names(sort=False))

  def names(self, *, sort: bool = True, **flags: Any) -> list[str]:
    """Registered names, sorted (`sort=False`: in registration order); with
    flags, those registered with them."""
    self._load()
    names = [n for n in self._items
             if all(self._info[n].get(k) == v for k, v in flags.items())]
    return sorted(names) if sort else names


@contextlib.contextmanager
def scratch(*registries: Registry) -> Iterator[None]:
  """Entries registered in these registries inside the block are dropped at
  its end (tests that import user code: the rest of the process sees the
  registries as they were).  Loads them first, so that what their packages
  register stays."""
  for r in registries:
    r._load()
  saved = [(r, dict(r._items), dict(r._info)) for r in registries]
  try:
    yield
  finally:
    for r, items, info in saved:
      r._items, r._info = items, info


DATASETS: Registry = Registry("dataset", ("mtrec_jax.data",))
MODELS: Registry = Registry("model", ("mtrec_jax.models",))
STRATEGIES: Registry = Registry("strategy", ("mtrec_jax.weighting",))
EXPERIMENTS: Registry = Registry("experiment", ("experiments",))
# The config's sections whose keys the layer that uses them declares:
# "model" (every registered model's fields) and "aux" (the auxiliary tasks'
# settings).  Each entry is a `config.Section`: its defaults, and which of
# its keys a run's identity (the config hash) covers.
CONFIG_SECTIONS: Registry = Registry(
    "config section", ("mtrec_jax.models", "mtrec_jax.tasks.auxiliary"))
