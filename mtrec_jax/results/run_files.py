"""A run's folder: config.json, metrics.jsonl, result.json (written atomically)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile


def _clean(x):
  """JSON has no NaN/inf: store them as None (null)."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def write_json(path: pathlib.Path, obj) -> None:
  """Writes via a temporary file and rename, so readers never see half."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_clean(obj), f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def append_jsonl(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(_clean(obj), sort_keys=True) + "\n")


def read_json(path: pathlib.Path):
  with open(path) as f:
    return json.load(f)
