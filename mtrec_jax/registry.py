"""Name -> builder registries with helpful errors.

Every pluggable piece (dataset, model, task head, weighting strategy,
experiment) is registered under a lowercase name with a decorator, so adding
one is a new file plus one decorator line.  Looking up an unknown name raises
`UnknownNameError` listing the closest valid names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

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


class Registry(Generic[T]):
  """A named collection of builders of one kind."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@MODELS.register("mmoe")`."""
    if name != name.lower():
      raise ValueError(f"{self.kind} names are lowercase, got {name!r}")

    def decorate(obj: T) -> T:
      if name in self._items and self._items[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj

    return decorate

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise UnknownNameError(
          unknown_name_message(self.kind, name, self._items)) from None

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))

  def names(self) -> list[str]:
    return sorted(self._items)


DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")
STRATEGIES: Registry = Registry("strategy")
EXPERIMENTS: Registry = Registry("experiment")
