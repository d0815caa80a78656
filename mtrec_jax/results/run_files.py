"""A run's folder: config.json, metrics.jsonl, result.json (written atomically).

`plain` is the one JSON sanitiser of the package: the run files, the results
store and the paper's export all write values through it.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any

METRICS_FILE = "metrics.jsonl"  # the eval records, one JSON object a line


def plain(x: Any) -> Any:
  """A JSON-ready copy: numpy/jax values become Python ones, NaN and inf
  become None (JSON has neither), tuples lists, paths strings, ConfigDicts
  dicts; anything else is a TypeError naming the value."""
  if x is None or isinstance(x, (bool, int, str)):
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {str(k): plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [plain(v) for v in x]
  if isinstance(x, pathlib.PurePath):
    return str(x)
  if hasattr(x, "tolist"):  # numpy / jax arrays and scalars
    return plain(x.tolist())
  if hasattr(x, "to_dict"):  # ml_collections.ConfigDict
    return plain(x.to_dict())
  raise TypeError(f"cannot store a value of type {type(x).__name__} ({x!r}) "
                  f"in the results store; convert it to a number, string, "
                  f"list or dict first")


def umask() -> int:
  """The process's umask, read without changing it where Linux tells it
  (/proc/self/status), else by setting and restoring it."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def file_mode(path: pathlib.Path) -> int:
  """The mode a file written at `path` should get: the current file's, else
  what the umask gives a new file (0666 & ~umask).  `tempfile.mkstemp`
  creates private 0600 files, which a write-then-rename must not keep."""
  try:
    return pathlib.Path(path).stat().st_mode & 0o777
  except FileNotFoundError:
    return 0o666 & ~umask()


def write_json(path: pathlib.Path, obj) -> None:
  """Writes via a temporary file and rename, so readers never see half; the
  file gets the umask's mode (`file_mode`), as `open` would give it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  mode = file_mode(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as f:
      json.dump(plain(obj), f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def append_jsonl(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(plain(obj), sort_keys=True) + "\n")


def read_json(path: pathlib.Path):
  with open(path) as f:
    return json.load(f)


def read_evals(path: pathlib.Path) -> list[dict]:
  """The eval records of a metrics.jsonl file: each line that is a JSON
  object with a 'step'. Other lines (a torn last line after a kill) are
  skipped; a missing file has none."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(rec, dict) and "step" in rec:
      out.append(rec)
  return out
