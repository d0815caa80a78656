"""Experiments, strategies, models, tasks and datasets from the user's code.

Two ways in, both ending in the same registries (`mtrec_jax.registry`), so a
plug-in's names behave like the bundled ones (closest-name errors included):

* An installed package declares an entry point in the group
  ``mtrec_jax.plugins``; its value is a module (imported: its registration
  decorators run) or a ``module:function`` (imported, then called with no
  arguments)::

      [project.entry-points."mtrec_jax.plugins"]
      my_pkg = "my_pkg.mtrec_plugin"

  Every such plug-in is loaded once per process, the first time any
  registry is read (`load_plugins`).  A plug-in that fails raises
  `PluginError` naming it, its package and the exception (with the line of
  the plug-in's code that raised), and every later lookup raises it again:
  a sweep never runs without a strategy it asked for.  ``MTREC_PLUGINS=0``
  skips entry points (e.g. to use mtrec while a broken one is installed).

* An experiment given as ``my_pkg.my_experiments:NAME`` or
  ``path/to/file.py:NAME`` (`experiment.get_experiment`, which every command
  that takes an experiment name uses): the module is imported here
  (`import_spec_module`; a file by its path), then NAME is the experiment
  the module registered under that name, else a module attribute NAME that
  is an `Experiment` or a function returning one.  The experiment is stored
  under NAME (the part after the colon).

This module imports nothing of mtrec_jax (the registries import it).

The section snapshot that lets `mtrec show/status` skip importing flax
(`config.sections`) covers only this package's code, so while a plug-in is
installed or user code was loaded, the live registries are read instead
(`involved`).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pathlib
import sys
import traceback
from typing import Any

GROUP = "mtrec_jax.plugins"

_state: dict[str, Any] = {"loaded": False, "error": None, "user_code": False,
                          "entry_points": None, "loaded_names": ()}


class PluginError(ImportError):
  """User code (a plug-in, a module or file named in an experiment spec)
  could not be loaded.  An ImportError, so `mtrec` reports it as one line
  (exit 2) the way it reports a missing optional package."""


def _where(exc: BaseException) -> str:
  """' (at file:line)' of the innermost frame outside importlib, if any."""
  frames = [f for f in traceback.extract_tb(exc.__traceback__)
            if "importlib" not in f.filename]
  return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def describe(exc: BaseException) -> str:
  return f"{type(exc).__name__}: {exc}{_where(exc)}"


def entry_points() -> list:
  """The installed entry points of group `GROUP` (each once, by name and
  value: an editable install may list one twice); empty with
  MTREC_PLUGINS=0."""
  if os.environ.get("MTREC_PLUGINS") == "0":
    return []
  if _state["entry_points"] is None:
    from importlib import metadata
    seen, out = set(), []
    for ep in metadata.entry_points(group=GROUP):
      if (ep.name, ep.value) not in seen:
        seen.add((ep.name, ep.value))
        out.append(ep)
    _state["entry_points"] = sorted(out, key=lambda e: e.name)
  return list(_state["entry_points"])


def involved() -> bool:
  """Whether code outside this package may have registered entries: a
  plug-in is installed, or a module/file spec was imported."""
  return _state["user_code"] or bool(entry_points())


def _dist_name(ep) -> str:
  dist = getattr(ep, "dist", None)
  return f" of package {dist.name!r}" if dist is not None else ""


def load_plugins() -> None:
  """Loads every installed plug-in, once per process (registries call this
  on their first lookup).  Raises `PluginError` on a broken one, then and on
  every later call."""
  if _state["error"] is not None:
    raise PluginError(_state["error"])
  if _state["loaded"]:
    return
  _state["loaded"] = True  # first: a plug-in that looks names up is not re-run
  names = []
  for ep in entry_points():
    try:
      obj = ep.load()
      if callable(obj) and not isinstance(obj, type(sys)):
        obj()
    except Exception as e:  # any failure of the user's code is reported
      _state["error"] = (
          f"mtrec plug-in {ep.name!r} ({ep.value}{_dist_name(ep)}, entry "
          f"point group {GROUP!r}) failed to load: {describe(e)}. Fix it, "
          f"uninstall its package, or set MTREC_PLUGINS=0 to run without "
          f"plug-ins")
      raise PluginError(_state["error"]) from None
    names.append(ep.name)
    _state["user_code"] = True
  _state["loaded_names"] = tuple(names)


def loaded() -> tuple[str, ...]:
  """The names of the plug-ins loaded so far."""
  return tuple(_state["loaded_names"])


def is_spec(name: str) -> bool:
  """Whether `name` is ``module:NAME`` or ``file.py:NAME`` (registered
  names have no colon)."""
  return ":" in str(name)


def _import_file(path: pathlib.Path, spec: str):
  if not path.is_file():
    raise PluginError(f"experiment {spec!r}: no file {path} (write "
                      f"path/to/file.py:NAME or a module path my_pkg.mod:NAME)")
  path = path.resolve()
  digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
  mod_name = f"mtrec_user_{path.stem}_{digest}"
  if mod_name in sys.modules:  # imported once: its decorators ran already
    return sys.modules[mod_name]
  mspec = importlib.util.spec_from_file_location(mod_name, path)
  module = importlib.util.module_from_spec(mspec)
  sys.modules[mod_name] = module  # dataclasses and pickle look modules up
  try:
    mspec.loader.exec_module(module)
  except Exception as e:
    del sys.modules[mod_name]
    raise PluginError(f"experiment {spec!r}: running {path} raised "
                      f"{describe(e)}") from None
  return module


def _import_module(name: str, spec: str):
  # As `python -m` does: a module in the current folder is found, also when
  # `mtrec` runs as a console script (which puts only its own folder first).
  if "" not in sys.path and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name and (name == e.name or name.startswith(e.name + ".")):
      raise PluginError(
          f"experiment {spec!r}: no module named {e.name!r}; check the "
          f"spelling, install the package, or put its folder on PYTHONPATH "
          f"(the current folder is searched)"
          f"(a file is given as path/to/file.py:NAME)") from None
    raise PluginError(f"experiment {spec!r}: importing {name!r} raised "
                      f"{describe(e)}") from None
  except Exception as e:
    raise PluginError(f"experiment {spec!r}: importing {name!r} raised "
                      f"{describe(e)}") from None


def import_spec_module(spec: str):
  """The module of ``module:NAME`` / ``file.py:NAME``, imported."""
  target, _, name = str(spec).rpartition(":")
  if not target or not name:
    raise ValueError(f"experiment {spec!r}: write my_pkg.module:NAME or "
                     f"path/to/file.py:NAME")
  # Registries first: user code registering a name the bundled packages
  # also register must clash now, not later.
  load_plugins()
  _state["user_code"] = True
  if target.endswith(".py") or "/" in target or os.sep in target:
    return _import_file(pathlib.Path(target).expanduser(), spec)
  return _import_module(target, spec)
