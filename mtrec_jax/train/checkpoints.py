"""Parameter checkpoints (Orbax) and initialising a run from another's.

Every run saves its selected parameters to `<run dir>/params` (an Orbax
`StandardCheckpointer` directory), so a later run can start from them:
pre-train then fine-tune is `--set init_from=<run dir>` (or the `params`
folder itself, or `WORKDIR/<experiment>/<run name>` when one config of that
grid point ran: run folders are `<run name>@<config hash>`).  `init_from` copies every parameter whose path and shape
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

Integrity: each checkpoint folder and params/ hold the SHA-256 of their
files (`MANIFEST`), checked before they are read: a damaged checkpoint is
skipped with a warning (the one before it resumes the run), damaged
parameters fail `init_from` with the folder named.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import pathlib
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtrec_jax.results import run_files

PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
# Bumped when `meta` changes incompatibly; older checkpoints are not resumed.
CHECKPOINT_VERSION = 1
# In each checkpoint folder (and params/): the SHA-256 of every file in it.
MANIFEST = "mtrec_sha256.json"


class ChecksumError(ValueError):
  """A checkpoint's files do not match its manifest (a damaged copy)."""


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


# The files Orbax writes into a checkpoint folder as it commits it (after
# the manifest went in): checksummed when the checkpoint is sealed.
COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")


def write_manifest(folder: pathlib.Path, skip: tuple[str, ...] = ()) -> None:
  """Writes `folder/MANIFEST`: {relative path: sha256} of every file under
  `folder` but `skip` (written via a temporary file and a rename); it is
  `sealed` when nothing was skipped."""
  folder = pathlib.Path(folder)
  sums = {name: _sha256(f) for name, f in _files(folder) if name not in skip}
  run_files.write_json(folder / MANIFEST, {"sha256": sums,
                                           "sealed": not skip})


def _files(folder: pathlib.Path):
  for f in sorted(folder.rglob("*")):
    if f.is_file() and not f.name.startswith((MANIFEST, f".{MANIFEST}")):
      yield f.relative_to(folder).as_posix(), f


def seal_manifest(folder: pathlib.Path) -> None:
  """Adds the checksums of Orbax's commit files to an unsealed manifest."""
  path = pathlib.Path(folder) / MANIFEST
  try:
    manifest = run_files.read_json(path)
  except (OSError, ValueError):
    return  # none (older code), or damaged: verify says so
  if not isinstance(manifest, dict) or manifest.get("sealed", True):
    return
  for name in COMMIT_FILES:
    if (folder / name).is_file():
      manifest["sha256"][name] = _sha256(folder / name)
  manifest["sealed"] = True
  run_files.write_json(path, manifest)


def verify_manifest(folder: pathlib.Path) -> bool:
  """Checks `folder` against its manifest: True when every listed file is
  there with its checksum, False when the folder has no manifest (written
  by older code, or the process died before writing it); raises
  `ChecksumError` naming the first file that differs or is missing."""
  folder = pathlib.Path(folder)
  path = folder / MANIFEST
  if not path.exists():
    return False
  try:
    sums = run_files.read_json(path)["sha256"]
    if not isinstance(sums, dict) or not sums:
      raise TypeError("no checksums")
  except (ValueError, KeyError, TypeError) as e:
    raise ChecksumError(f"its checksum file {MANIFEST} is unreadable "
                        f"({_short(e)})") from None
  for name, want in sums.items():
    f = folder / name
    if not f.is_file():
      raise ChecksumError(f"{name} is missing")
    if _sha256(f) != want:
      raise ChecksumError(f"{name} does not match its checksum (the file "
                          f"changed after it was written)")
  return True


def save_params(run_dir: str | pathlib.Path, params) -> pathlib.Path:
  """Writes `params` to `<run_dir>/params` (replacing an older copy)."""
  path = pathlib.Path(run_dir).resolve() / PARAMS_DIR
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, jax.device_get(params), force=True)
  checkpointer.wait_until_finished()
  write_manifest(path)
  return path


def params_dir(path: str | pathlib.Path) -> pathlib.Path:
  """The checkpoint folder `path` names: a run dir, its params/, or a grid
  point `WORKDIR/<experiment>/<run name>` whose one run folder
  `<run name>@<config hash>` holds params/ (run folders carry the config
  hash since issue 16; a folder of the older layout, without it, is read as
  it is).  Several configs of that grid point: an error listing them."""
  path = pathlib.Path(path).expanduser().resolve()
  if (path / PARAMS_DIR).is_dir():
    return path / PARAMS_DIR
  if path.is_dir():
    return path
  found = sorted(p / PARAMS_DIR for p in path.parent.glob(
      f"{glob.escape(path.name)}@*") if (p / PARAMS_DIR).is_dir()
                 ) if path.parent.is_dir() else []
  if len(found) > 1:
    raise FileNotFoundError(
        f"init_from: {str(path)!r} names {len(found)} runs of different "
        f"configs ({', '.join(p.parent.name for p in found)}); give the one "
        f"to start from, e.g. {str(found[0].parent)!r}")
  if not found:
    raise FileNotFoundError(
        f"init_from: no checkpoint at {str(path)!r}; give a run directory "
        f"(it holds {PARAMS_DIR}/) or its {PARAMS_DIR}/ folder")
  return found[0]


def load_params(path: str | pathlib.Path):
  """The parameter tree saved by `save_params` (a run dir or its params/),
  checked against its checksums first (a folder saved before they were
  written is read unchecked)."""
  folder = params_dir(path)
  try:
    verify_manifest(folder)
  except ChecksumError as e:
    raise ChecksumError(f"init_from: the parameters in {str(folder)!r} are "
                        f"damaged: {e}; train that run again (mtrec run "
                        f"--force) or start from another") from None
  return ocp.StandardCheckpointer().restore(folder)


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
  checked on restore, so foreign state is never resumed.  Each checkpoint
  folder holds the SHA-256 of its files (`MANIFEST`, written before Orbax
  renames the folder into place; Orbax's own commit files are added when
  the next save starts or the manager closes), checked on restore.  `mode` ('min' or 'max') ranks
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
    # The manifest is written into the finished temporary folder, before
    # Orbax renames it into place, so a checkpoint and its checksums appear
    # together (a folder without one is older, or not an Orbax rename).
    self._saving: int | None = None
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(
            post_finalization_callback=self._write_manifest))
    self._manager_options = options
    self._manager = ocp.CheckpointManager(self.path, options=options)

  def _write_manifest(self) -> None:
    if self._saving is None or jax.process_index() != 0:
      return
    tmp = [p for p in self.path.glob(f"{self._saving}.orbax-checkpoint-tmp*")
           if p.is_dir()]
    if len(tmp) == 1:
      write_manifest(tmp[0], skip=COMMIT_FILES)

  def _seal(self) -> None:
    """Seals the manifests of the finished checkpoints (call with no save
    in flight)."""
    if jax.process_index() != 0:
      return
    for step in saved_steps(self.path.parent):
      seal_manifest(self.path / str(step))

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
    self._manager.wait_until_finished()  # the manifest names one step
    self._seal()
    self._saving = int(step)
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

    A checkpoint that fails its checksums (`MANIFEST`) or cannot be read
    (truncated or missing files) is deleted with a `CheckpointWarning` and
    the one before it is tried.  Checkpoints of another config or seed, or
    of an older checkpoint format, are moved aside (`checkpoints.other-*`,
    nothing is deleted: run folders are per config, so they were put there
    by hand or by older code).  `state_like`/`params_like` give the trees'
    structure, shapes and dtypes.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    ours = {"version": CHECKPOINT_VERSION, **self.identity}
    for i, step in enumerate(steps):
      older = steps[i + 1:]
      try:  # Orbax and TensorStore raise many kinds of errors
        if not verify_manifest(self.path / str(step)):
          warnings.warn(f"checkpoint {self.path / str(step)} has no "
                        f"checksums ({MANIFEST}; written by older code): "
                        f"reading it unverified", CheckpointWarning,
                        stacklevel=2)
        meta = self._meta(step)
      except Exception as e:
        self._damaged(step, e, older)
        continue
      theirs = {k: meta.get(k) for k in ours}
      if theirs != ours:
        aside = self._move_aside()
        warnings.warn(
            f"the checkpoints in {self.path} are not this run's ({theirs}; "
            f"this run: {ours}); moved them to {aside} and starting from "
            f"step 0", CheckpointWarning, stacklevel=2)
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

  def _move_aside(self) -> pathlib.Path:
    """Renames the checkpoints folder to a fresh `checkpoints.other-<n>`
    and starts an empty one."""
    self._manager.wait_until_finished()
    self._manager.close()
    n = 0
    while (aside := self.path.with_name(f"{CHECKPOINTS_DIR}.other-{n}")
           ).exists():
      n += 1
    self.path.rename(aside)
    self._manager = ocp.CheckpointManager(self.path,
                                          options=self._manager_options)
    return aside

  def clear(self) -> None:
    """Deletes every checkpoint of the run."""
    self._manager.wait_until_finished()
    for step in self._manager.all_steps():
      self._delete(step)

  def close(self) -> None:
    """Waits for the pending save and releases the manager's threads."""
    self._manager.wait_until_finished()
    self._seal()
    self._manager.close()

  def __enter__(self) -> RunCheckpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
