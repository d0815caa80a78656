"""Parameter checkpoints (Orbax) and initialising a run from another's.

Every run saves its selected parameters to `<run dir>/params` (an Orbax
`StandardCheckpointer` directory), so a later run can start from them:
pre-train then fine-tune is `--set init_from=<run dir>` (or the `params`
folder itself).  `init_from` copies every parameter whose path and shape
match (e.g. the sequence encoder and the item table under
`shared/feature_encoder`) and keeps the fresh initialisation elsewhere (new
towers, a different connection), so the two runs' task sets may differ;
`init_scope` (path prefixes, default the feature encoder) says what to copy.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PARAMS_DIR = "params"


def save_params(run_dir: str | pathlib.Path, params) -> pathlib.Path:
  """Writes `params` to `<run_dir>/params` (replacing an older copy)."""
  path = pathlib.Path(run_dir).resolve() / PARAMS_DIR
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, jax.device_get(params), force=True)
  checkpointer.wait_until_finished()
  return path


def params_dir(path: str | pathlib.Path) -> pathlib.Path:
  """The checkpoint folder `path` names (a run dir or its params/)."""
  path = pathlib.Path(path).expanduser().resolve()
  if (path / PARAMS_DIR).is_dir():
    path = path / PARAMS_DIR
  if not path.is_dir():
    raise FileNotFoundError(
        f"init_from: no checkpoint at {str(path)!r}; give a run directory "
        f"(it holds {PARAMS_DIR}/) or its {PARAMS_DIR}/ folder")
  return path


def load_params(path: str | pathlib.Path):
  """The parameter tree saved by `save_params` (a run dir or its params/)."""
  return ocp.StandardCheckpointer().restore(params_dir(path))


def _flat(tree) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in keys): leaf
          for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


DEFAULT_SCOPE = ("shared/feature_encoder",)


def merge_params(fresh, loaded, scope=DEFAULT_SCOPE) -> tuple[Any, list[str]]:
  """`fresh` with the leaves under `scope` that `loaded` has at the same path.

  `scope` lists path prefixes ("" = everything); the default copies the
  feature encoder (embedding tables and sequence encoders), the part a
  pre-training run shares with a fine-tuning run whose tasks, and so gates
  and towers, differ.  Returns (params, copied paths).  A leaf in scope
  whose shape differs is an error (the models disagree, e.g. on an
  embedding width), and so is a scope that copies nothing.
  """
  source = _flat(loaded)
  copied = []
  scope = tuple(scope)

  def pick(keys, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in keys)
    if name not in source or not name.startswith(scope):
      return leaf
    value = np.asarray(source[name])
    if value.shape != leaf.shape:
      raise ValueError(f"init_from: parameter {name!r} has shape "
                       f"{list(value.shape)} in the checkpoint but "
                       f"{list(leaf.shape)} in this model; make the two "
                       f"configs agree (e.g. embedding and encoder widths)")
    copied.append(name)
    return jax.numpy.asarray(value, dtype=leaf.dtype)

  merged = jax.tree_util.tree_map_with_path(pick, fresh)
  if not copied:
    raise ValueError(f"init_from: no parameter under {list(scope)} matches "
                     f"this model; set init_scope to prefixes of the "
                     f"checkpoint's paths, e.g. {sorted(source)[:3]}")
  return merged, copied
