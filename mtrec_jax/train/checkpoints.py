"""Parameter checkpoints (Orbax) and initialising a run from another's.

Every run saves its selected parameters to `<run dir>/params` (an Orbax
`StandardCheckpointer` directory), so a later run can start from them:
pre-train then fine-tune is `--set init_from=<run dir>` (or the `params`
folder itself).  `init_from` copies every parameter whose path and shape
match (e.g. the sequence encoder and the item table under
`shared/feature_encoder`) and keeps the fresh initialisation elsewhere (new
towers, a different connection), so the two runs' task sets may differ;
`init_scope` (path prefixes, default the feature encoder) says what to copy.

While it trains, a run also keeps resumable checkpoints in
`<run dir>/checkpoints/<step>/` (`RunCheckpoints`, an Orbax
`CheckpointManager`), each with three items: `state` (the whole TrainState:
params, optimizer and strategy state, RNG key, step), `best` (the parameters
selected so far) and `meta` (JSON: the selection bookkeeping, the train log
so far, the initial validation losses, and the config hash and seed they
belong to).  The data iterator needs no item: the batch of step t is a pure
function of (seed, t), so its position is the step.  Every checkpoint is
self-contained, so any one of them resumes the run; the last N are kept, and
the best (by the selection metric) as well.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
# Bumped when `meta` changes incompatibly; older checkpoints are not resumed.
CHECKPOINT_VERSION = 1


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


class CheckpointWarning(UserWarning):
  """A checkpoint could not be used (unreadable, or another config's)."""


def checkpoints_dir(run_dir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(run_dir).resolve() / CHECKPOINTS_DIR


def saved_steps(run_dir: str | pathlib.Path) -> list[int]:
  """The steps of the finished checkpoints in `run_dir` (none: [])."""
  path = checkpoints_dir(run_dir)
  if not path.is_dir():
    return []
  # Orbax writes a step into a temporary folder and renames it when done,
  # so a bare number is a finished save (its files may still be damaged).
  return sorted(int(p.name) for p in path.iterdir()
                if p.is_dir() and p.name.isdigit())


def clear_checkpoints(run_dir: str | pathlib.Path) -> None:
  """Removes `run_dir/checkpoints` (a fresh run must not resume old ones)."""
  shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: the train state, the best parameters, `meta`."""
  step: int
  state: Any
  best_params: Any
  meta: dict


def _abstract(tree):
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def _short(e: Exception) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}"


class RunCheckpoints:
  """The resumable checkpoints of one run (see the module docstring).

  `identity` (config hash and seed) is written into each checkpoint and
  checked on restore, so a run directory reused by another config starts
  fresh instead of resuming foreign state.  `mode` ('min' or 'max') ranks
  the selection values passed to `save` to keep the best checkpoint.
  """

  def __init__(self, run_dir: str | pathlib.Path, *, keep: int, mode: str,
               identity: dict):
    self.path = checkpoints_dir(run_dir)
    self.identity = dict(identity)
    sign = 1.0 if mode == "max" else -1.0

    def rank(metrics):
      # Ties go to the earlier step, as in the loop's strict comparison.
      return (sign * metrics["value"], -metrics["step"])

    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=max(keep, 1)),
        ocp.checkpoint_managers.BestN(get_metric_fn=rank, n=1,
                                      keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.path, options=options)

  def save(self, step: int, state, best_params, meta: dict,
           value: float | None = None) -> None:
    """Starts saving (asynchronously) the checkpoint of `step`.

    `value` is the selection metric evaluated at this step, if it was; it
    ranks the checkpoint for keeping the best one.
    """
    metrics = None
    if value is not None and math.isfinite(value):
      metrics = {"value": float(value), "step": int(step)}
    meta = {"version": CHECKPOINT_VERSION, **self.identity, "step": int(step),
            **meta}
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        best=ocp.args.StandardSave(best_params),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

  def _meta(self, step: int) -> dict:
    meta = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    if not isinstance(meta, dict) or meta.get("step") != step:
      raise ValueError(f"its meta item is not that of step {step}: "
                       f"{str(meta)[:100]}")
    return meta

  def _items(self, step: int, meta: dict, state_like,
             params_like) -> Restored:
    items = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)),
        best=ocp.args.StandardRestore(_abstract(params_like))))
    if int(items.state.step) != step:
      raise ValueError(f"its train state is at step {int(items.state.step)}")
    return Restored(step, items.state, items.best, meta)

  def restore_latest(self, state_like, params_like) -> Restored | None:
    """The newest usable checkpoint, or None (then the run starts fresh).

    A checkpoint that cannot be read (truncated or missing files) is
    deleted with a `CheckpointWarning` and the one before it is tried;
    checkpoints of another config or seed, or of an older checkpoint
    format, are all deleted with a warning.  `state_like`/`params_like`
    give the trees' structure, shapes and dtypes.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    ours = {"version": CHECKPOINT_VERSION, **self.identity}
    for i, step in enumerate(steps):
      older = steps[i + 1:]
      try:  # Orbax and TensorStore raise many kinds of errors
        meta = self._meta(step)
      except Exception as e:
        self._damaged(step, e, older)
        continue
      theirs = {k: meta.get(k) for k in ours}
      if theirs != ours:
        warnings.warn(
            f"the checkpoints in {self.path} are not this run's ({theirs}; "
            f"this run: {ours}); deleting them and starting from step 0",
            CheckpointWarning, stacklevel=2)
        self.clear()
        return None
      try:
        return self._items(step, meta, state_like, params_like)
      except Exception as e:
        self._damaged(step, e, older)
    return None

  def _damaged(self, step: int, error: Exception, older: list[int]) -> None:
    warnings.warn(
        f"checkpoint {self.path / str(step)} is damaged ({_short(error)}); "
        f"deleting it and " + (f"using the one before (step {older[0]})"
                               if older else "starting from step 0"),
        CheckpointWarning, stacklevel=3)
    self._delete(step)

  def _delete(self, step: int) -> None:
    try:
      self._manager.delete(step)
    except Exception:  # a half-deleted damaged folder: remove it by hand
      shutil.rmtree(self.path / str(step), ignore_errors=True)
      self._manager.reload()

  def clear(self) -> None:
    """Deletes every checkpoint of the run."""
    self._manager.wait_until_finished()
    for step in self._manager.all_steps():
      self._delete(step)

  def close(self) -> None:
    """Waits for the pending save and releases the manager's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> RunCheckpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
