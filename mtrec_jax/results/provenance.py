"""What produced a result: code version, packages, devices."""
from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess

import jax

PACKAGES = ("mtrec-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "chex", "numpy", "ml-collections", "grain", "tensorflow-datasets")


# path -> git_state's answer the first time this process asked.
_GIT_STATES: dict[str, dict] = {}


def git_state(path: pathlib.Path | None = None) -> dict:
  """{'commit': sha or None, 'dirty': bool or None} of the source checkout,
  read once per process: the code a process runs is what it imported when
  it started, so a commit or an edit made while it trains (a long sweep,
  or the next population of one) must not be recorded as that run's code.
  The first call (`sweep.run_sweep`, `train.loop.train_and_evaluate`)
  comes right after the imports; `refresh_git_state` forgets the
  answers."""
  path = path or pathlib.Path(__file__).resolve().parents[2]
  key = str(path)
  if key not in _GIT_STATES:
    _GIT_STATES[key] = _read_git_state(path)
  return dict(_GIT_STATES[key])


def refresh_git_state() -> None:
  """Forget what `git_state` read (for a process that reloads its code)."""
  _GIT_STATES.clear()


def _read_git_state(path: pathlib.Path) -> dict:
  def git(*args):
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True,
                          text=True, timeout=10)
  try:
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
      return {"commit": None, "dirty": None}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return {"commit": head.stdout.strip(), "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def device_info() -> dict:
  devices = jax.devices()
  return {"platform": devices[0].platform, "kind": devices[0].device_kind,
          "count": len(devices), "process_count": jax.process_count()}


def provenance() -> dict:
  return {"git": git_state(), "packages": package_versions(),
          "devices": device_info()}
