"""train_and_evaluate(config, workdir): one run, from config to result.json.

Model selection and early stopping look at validation metrics only; the test
split is evaluated once, with the selected parameters, at the end.

With a run directory, the run keeps checkpoints there (`checkpoints.py`;
`train.checkpoint_every`, `checkpoint_minutes`, `keep_checkpoints`), and
`resume=True` continues from the newest usable one.  Everything a step
depends on is in the checkpoint or a pure function of (seed, step): the
batch of step t, the step's RNG key fold_in(rng, t), evaluation.  So a
resumed run ends with the same result as an uninterrupted one, timings
aside.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import pathlib
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import jax

from mtrec_jax import config as config_lib
from mtrec_jax import weighting
from mtrec_jax.data import stored_synthetic
from mtrec_jax.data.dataset import Dataset
from mtrec_jax.data.pipeline import num_rows, train_batches
from mtrec_jax.tasks.auxiliary import build_aux_tasks
from mtrec_jax.models.build import build_model
from mtrec_jax.registry import DATASETS, STRATEGIES, UnknownNameError, closest
from mtrec_jax.results import loggers
from mtrec_jax.results import provenance as provenance_lib
from mtrec_jax.results import run_files
from mtrec_jax.tasks.metrics import direction
from mtrec_jax.train import checkpoints
from mtrec_jax.train import compiler
from mtrec_jax.train import parallel
from mtrec_jax.train import faults  # test-only (tests/faults/)
from mtrec_jax.train import preemption
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.evaluate import evaluate, make_predict_fn
from mtrec_jax.train.optim import learning_rate_schedule, make_optimizer
from mtrec_jax.models import item_text
from mtrec_jax.train.step import check_rep_gramian, make_train_step
from mtrec_jax.weighting.alternating import freezes_groups
from mtrec_jax.weighting import sampling

# Extra batches (Auto-Lambda's meta batch, MoDo's and SDMGrad's two samples,
# `weighting.sampling`): a second shuffle of their split, seeded apart from
# the training order (epoch_order(seed + this, epoch)).
META_SEED_OFFSET = 1_000_003


@functools.lru_cache(maxsize=8)
def _cached_dataset(name: str, frozen_kwargs, seed: int) -> Dataset:
  kwargs = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in frozen_kwargs}
  # A storable dataset is generated in memory or read back from its
  # prepared copy (`data.storage`); any other reads its own files.
  return stored_synthetic.load(name, seed=seed, **kwargs)


def clear_dataset_cache() -> None:
  """Forgets the datasets built so far in this process (benchmarks, tests)."""
  _cached_dataset.cache_clear()


def load_dataset(config) -> Dataset:
  """Builds (or reuses) the dataset a config names; data seed = run seed."""
  kwargs = config_lib.to_dict(config.data)
  name = kwargs.pop("name")
  DATASETS.get(name)  # unknown names fail here, with suggestions
  try:
    return _cached_dataset(name, config_lib.freeze(kwargs),
                           int(config.seed))
  except TypeError as e:
    raise TypeError(f"dataset {name!r} rejected its config (data.*): {e}") from e


def select_tasks(dataset: Dataset, names) -> tuple:
  by_name = {t.name: t for t in dataset.tasks}
  if not names:
    return tuple(dataset.tasks)
  for n in names:
    if n not in by_name:
      raise UnknownNameError(
          f"dataset {dataset.name!r} has no task {n!r}"
          + (f"; did you mean {', '.join(closest(n, by_name))}?"
             if closest(n, by_name) else "")
          + f" Tasks: {', '.join(by_name)}")
  return tuple(by_name[n] for n in names)


def build_strategy(config, steps_per_epoch: int | None = None):
  """The config's strategy.  A strategy whose factory takes
  `steps_per_epoch` (e.g. `dwa`, which averages losses per epoch) gets the
  run's (the training split's rows // batch size: `train_batches`' epochs)
  unless its hyper-parameters set one."""
  hparams = config_lib.to_dict(config.strategy.hparams)
  hparams = {k: (tuple(v) if isinstance(v, list) else v)
             for k, v in hparams.items()}
  if steps_per_epoch is not None and "steps_per_epoch" not in hparams:
    factory = STRATEGIES.get(config.strategy.name)
    if "steps_per_epoch" in inspect.signature(factory).parameters:
      hparams["steps_per_epoch"] = int(steps_per_epoch)
  # Auto-Lambda's virtual step uses the model optimiser's learning rate.
  if "lr_schedule" in inspect.signature(
      STRATEGIES.get(config.strategy.name)).parameters:
    hparams.setdefault("lr_schedule", learning_rate_schedule(
        config.optimizer, config.train.num_steps))
  try:
    return weighting.build(config.strategy.name, **hparams)
  except TypeError as e:
    raise TypeError(f"strategy {config.strategy.name!r} rejected its "
                    f"hyper-parameters (strategy.hparams.*): {e}") from e


class Components:
  """Everything a run builds from its config, built before anything runs."""

  def __init__(self, config):
    self.config = config
    self.dataset = load_dataset(config)
    aux_cfg = config_lib.to_dict(config.aux)
    self.aux_tasks = build_aux_tasks(aux_cfg, self.dataset,
                                     config_lib.to_dict(config.model))
    if aux_cfg["only"]:
      if not self.aux_tasks:
        raise ValueError("aux.only trains the auxiliary tasks alone, but "
                         "aux.tasks is empty; name some (e.g. mim, cl, kg)")
      if tuple(config.tasks):
        raise ValueError(f"aux.only trains no dataset task, but tasks = "
                         f"{tuple(config.tasks)}; clear one of the two")
      self.tasks = ()
    else:
      self.tasks = select_tasks(self.dataset, tuple(config.tasks))
    self.task_names = tuple(t.name for t in self.tasks) + tuple(
        t.name for t in self.aux_tasks)
    self.model = build_model(config.model, self.dataset.features,
                             tuple((t.name, t.out_dim) for t in self.tasks),
                             self.aux_tasks,
                             item_text.for_run(config, self.dataset))
    rows = num_rows(self.dataset.splits["train"])
    self.steps_per_epoch = rows // config.train.batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(f"train.batch_size {config.train.batch_size} is larger "
                       f"than the {rows} training rows; lower it")
    self.strategy = build_strategy(config, self.steps_per_epoch)
    # A strategy that freezes parameter groups (`alternating`) needs one
    # optimizer state per group (train/optim.py).
    self.optimizer = make_optimizer(
        config.optimizer, config.train.num_steps,
        groups=(self.task_names if freezes_groups(self.strategy) else None))
    sel = config.train.selection_metric
    parts = sel.split("/")
    aux_names = {t.name for t in self.aux_tasks}
    ranked = {t.name for t in self.aux_tasks if t.eval_task is not None}
    if not (sel == "val/loss" or (
        len(parts) == 3 and parts[0] == "val" and
        (parts[1] in {t.name for t in self.tasks} | ranked or
         (parts[1] in aux_names and parts[2] == "loss")))):
      raise ValueError(f"train.selection_metric {sel!r} must be 'val/loss' or "
                       f"'val/<task>/<metric>' with a task of this run "
                       f"({', '.join(self.task_names)}; auxiliary tasks other "
                       f"than next_all have only a loss)")
    self.selection_mode = "min" if parts[-1] == "loss" else direction(parts[-1])
    if config.init_from:
      checkpoints.params_dir(config.init_from)  # a missing one fails early
    tcfg = config.train
    if min(tcfg.checkpoint_every, tcfg.checkpoint_minutes,
           tcfg.keep_checkpoints) < 0:
      raise ValueError(f"train.checkpoint_every ({tcfg.checkpoint_every}), "
                       f"checkpoint_minutes ({tcfg.checkpoint_minutes}) and "
                       f"keep_checkpoints ({tcfg.keep_checkpoints}) must be "
                       f">= 0 (keep_checkpoints 0 turns checkpoints off)")
    # The mesh (and so a batch size it cannot split) fails here, before
    # anything is written, rather than at the first step.
    mesh = parallel.make_mesh(config.train.mesh_data or None,
                              config.train.mesh_model)
    data = mesh.shape[parallel.DATA]
    if config.train.batch_size % data:
      raise ValueError(f"train.batch_size {config.train.batch_size} does not "
                       f"split over the {data} devices of the 'data' mesh "
                       f"axis; use a multiple of {data} (or set "
                       f"train.mesh_data)")
    parallel.jacobian_engine(config.train.jacobian_engine)  # checks it
    check_rep_gramian(config.strategy.get("rep_gramian", "rows"))


def init_state(c: Components):
  cfg = c.config
  root = jax.random.PRNGKey(cfg.seed)
  init_key, dropout_key, train_key = jax.random.split(root, 3)
  sample = {k: v[:2] for k, v in c.dataset.splits["train"].items()}
  if c.aux_tasks:
    params = c.model.init({"params": init_key, "dropout": dropout_key}, sample,
                          dropout_key, method="init_all")["params"]
  else:
    params = c.model.init({"params": init_key, "dropout": dropout_key},
                          sample, train=False)["params"]
  return state_lib.create(params, c.optimizer, c.strategy, len(c.task_names),
                          train_key, strategy_row(c, params))


def strategy_row(c: Components, params):
  """One Jacobian row's shape for strategies with per-parameter state: None
  (the shared parameters) in params mode; in rep mode, one example's
  flattened representation size (rows ``[K, B, *F] -> F``)."""
  mode = c.config.strategy.mode or c.strategy.default_mode
  if not c.strategy.row_state or mode != "rep":
    return None
  sample = {k: v[:2] for k, v in c.dataset.splits["train"].items()}
  rep = jax.eval_shape(lambda p: c.model.apply(
      {"params": p}, sample, train=False, method="represent"), params)
  return math.prod(rep.shape[2:])


def _better(a: float, b: float | None, mode: str) -> bool:
  if b is None or math.isnan(b):
    return not math.isnan(a)
  return a < b if mode == "min" else a > b


def _progress(enabled: bool, total: int):
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                             TextColumn, TimeRemainingColumn)
  return Progress(TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not enabled, transient=True)


def train_and_evaluate(config, workdir: str | pathlib.Path | None = None, *,
                       experiment: str = "", grid: dict | None = None,
                       progress: bool | None = None,
                       components: Components | None = None,
                       report=None, resume: bool = False,
                       log: Callable[[str], None] | None = None
                       ) -> dict[str, Any]:
  """Trains one run and returns its result dict (also ``workdir/result.json``).

  A non-finite loss stops the run with status ``diverged`` at its step; an
  exception gives status ``failed`` (with the error) and is re-raised, and
  so does a non-finite final loss (the selected parameters are damaged).
  SIGTERM/SIGINT (`preemption`) checkpoint the run and raise `Preempted`.
  `report(result, dataset) -> dict`, when given, adds ``result["report"]``.
  `resume` continues from the newest usable checkpoint in `workdir` (none:
  a fresh start); without it, old checkpoints there are deleted first.
  `log(message)` hears where the run starts from.
  """
  start = time.time()
  workdir = pathlib.Path(workdir) if workdir is not None else None
  # Several processes (multi-host) share one workdir: all of them write the
  # checkpoints (Orbax coordinates them); process 0 alone writes the files.
  files = workdir if jax.process_index() == 0 else None
  progress = sys.stderr.isatty() if progress is None else progress
  c = components or Components(config)
  cfg = c.config
  result: dict[str, Any] = {
      "experiment": experiment, "grid": dict(grid or {"seed": int(cfg.seed)}),
      "seed": int(cfg.seed), "config_hash": config_lib.config_hash(cfg),
      "strategy": cfg.strategy.name, "model": cfg.model.name,
      "tasks": [t.name for t in c.tasks],
      "aux_tasks": [t.name for t in c.aux_tasks], **provenance_lib.provenance()}
  if files is not None:
    files.mkdir(parents=True, exist_ok=True)
    run_files.write_json(files / "config.json", config_lib.to_dict(cfg))
  try:
    with preemption.watch() as stop:
      result.update(_train(c, workdir, progress, resume,
                           log or (lambda m: None), stop))
    if report is not None:
      result["report"] = report(result, c.dataset)
  except preemption.Preempted as e:  # checkpointed; the sweep marks it
    result.update(status="preempted", error=str(e), steps=e.step,
                  wall_time_s=time.time() - start)
    if files is not None:
      run_files.write_json(files / "result.json", result)
    raise
  except Exception as e:  # recorded, then re-raised for the caller to decide
    result.update(status="failed", error=f"{type(e).__name__}: {e}",
                  traceback=traceback.format_exc(limit=20))
    result["wall_time_s"] = time.time() - start
    if files is not None:
      run_files.write_json(files / "result.json", result)
    raise
  result["wall_time_s"] = time.time() - start
  if files is not None:
    run_files.write_json(files / "result.json", result)
  return result


def _small_tree(tree, max_size: int = 10_000):
  """A strategy state as JSON lists, or None when it is too large to store."""
  leaves = jax.tree_util.tree_leaves(tree)
  if sum(int(x.size) for x in leaves) > max_size:
    return None
  return jax.tree_util.tree_map(lambda x: jax.device_get(x).tolist(), tree)


def _keep_evals_until(path: pathlib.Path, step: int) -> None:
  """Drops the records of `path` (metrics.jsonl) after `step`, and a torn
  last line: a resumed run appends them again."""
  if not path.exists():
    return
  kept = [json.dumps(rec, sort_keys=True) + "\n"
          for rec in run_files.read_evals(path) if rec["step"] <= step]
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  with os.fdopen(fd, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


@dataclasses.dataclass
class LoopState:
  """What the loop tracks besides the TrainState (issue 14 item 4); a
  checkpoint holds `best_params` as its `best` item and the rest as `meta`,
  under the keys checkpoints always had (older ones resume)."""
  best_params: Any
  initial: dict  # validation losses before training (GradNorm's L_k(0))
  best_value: float | None = None  # the selection metric's best so far
  best_step: int = 0
  bad_evals: int = 0  # evaluations since the best one (patience)
  stopped: bool = False  # stopped early (patience ran out)
  train_log: list = dataclasses.field(default_factory=list)

  def meta(self) -> dict:
    # A copy of the log: the save is written in the background as it grows.
    return {"best_value": self.best_value, "best_step": self.best_step,
            "bad_evals": self.bad_evals, "stopped": self.stopped,
            "train_log": list(self.train_log), "initial": self.initial}

  @classmethod
  def restore(cls, restored: checkpoints.Restored) -> LoopState:
    m = restored.meta
    return cls(restored.best_params, m["initial"], m["best_value"],
               m["best_step"], m["bad_evals"], m["stopped"],
               list(m["train_log"]))

  def evaluated(self, step: int, value: float, params, mode: str,
                patience: int) -> None:
    """Keeps `params` when `value` is the best so far; counts patience."""
    if _better(value, self.best_value, mode):
      self.best_params, self.best_value, self.best_step = params, value, step
      self.bad_evals = 0
    else:
      self.bad_evals += 1
      self.stopped = bool(patience and self.bad_evals >= patience)


class _Saver:
  """The run's checkpoints (`store`: None without a run directory, or with
  checkpoints off and none to resume) and when to write one: every
  `checkpoint_every` steps (0 = at each evaluation), after
  `checkpoint_minutes`, at the last step and at an early stop."""

  def __init__(self, c: Components, workdir, resume: bool, log):
    tcfg = c.config.train
    self.every = int(tcfg.checkpoint_every) or int(tcfg.eval_every)
    self.seconds = 60.0 * float(tcfg.checkpoint_minutes)
    self.keep = int(tcfg.keep_checkpoints)
    self.last_save = time.monotonic()
    self.store = None
    if workdir is None:
      return
    found = checkpoints.saved_steps(workdir)
    if found and not resume:
      log(f"deleting the checkpoints of an earlier attempt (steps "
          f"{', '.join(map(str, found))}); resuming would continue from "
          f"them (mtrec run --resume)")
      if jax.process_index() == 0:
        checkpoints.clear_checkpoints(workdir)
      if jax.process_count() > 1:  # nobody saves before the folder is clear
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("mtrec: old checkpoints cleared")
    if self.keep or (resume and found):
      self.store = checkpoints.RunCheckpoints(
          workdir, keep=self.keep, mode=c.selection_mode,
          identity={"config_hash": config_lib.config_hash(c.config),
                    "seed": int(c.config.seed)})

  def due(self, step: int, final: bool) -> bool:
    """Whether to save after `step`; `final`: the last step of the loop."""
    if self.store is None or not self.keep:
      return False
    return (final or step % self.every == 0 or
            (self.seconds > 0 and
             time.monotonic() - self.last_save >= self.seconds))

  def save(self, step, state, loop_state: LoopState, value) -> None:
    self.store.save(step, state, loop_state.best_params, loop_state.meta(),
                    value)
    self.last_save = time.monotonic()

  def close(self) -> None:
    if self.store is not None:
      self.store.close()


def _train(c: Components, workdir, progress: bool, resume: bool = False,
           log=lambda m: None, stop=None) -> dict[str, Any]:
  primary = jax.process_index() == 0
  with loggers.make_loggers(c.config, workdir if primary else None
                            ) as run_logger:
    saver = _Saver(c, workdir, resume, log)
    try:
      return _train_with(c, workdir, progress, resume, log, saver, run_logger,
                         stop if stop is not None else preemption.Flag())
    finally:
      saver.close()


def _train_with(c: Components, workdir, progress: bool, resume: bool, log,
                saver: _Saver, run_logger: loggers.RunLogger,
                stop: preemption.Flag) -> dict[str, Any]:
  cfg = c.config
  tcfg = cfg.train
  state = init_state(c)
  init_info = None
  if cfg.init_from:
    params, copied = checkpoints.merge_params(
        state.params, checkpoints.load_params(cfg.init_from),
        tuple(cfg.init_scope))
    state = state_lib.create(params, c.optimizer, c.strategy,
                             len(c.task_names), state.rng,
                             strategy_row(c, params))
    init_info = {"path": str(cfg.init_from),
                 "read": str(checkpoints.params_dir(cfg.init_from)),
                 "copied": len(copied),
                 "total": len(jax.tree_util.tree_leaves(params))}
  engine = parallel.jacobian_engine(tcfg.jacobian_engine)
  mesh = parallel.make_mesh(tcfg.mesh_data or None, tcfg.mesh_model)
  shardings = parallel.state_sharding(state, mesh, tcfg.shard_embeddings)
  step_fn = parallel.jit_train_step(
      make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                      cfg.strategy.mode, jacobian=engine,
                      rep_gramian=cfg.strategy.get("rep_gramian", "rows"),
                      dropout_bits=tcfg.dropout_bits),
      mesh, shardings,
      compiler_options=compiler.compiler_options(tcfg.get("compiler",
                                                          "default")))
  predict = make_predict_fn(c.model, c.tasks)
  splits = c.dataset.splits
  restored = None
  if resume and saver.store is not None:
    restored = saver.store.restore_latest(state, state.params)
  if restored is None:
    if resume:
      log("no usable checkpoint: starting from step 0")
    # Validation losses before training: the denominators of the relative
    # loss sum L_k(t) / L_k(0) that GradNorm (Chen et al. 2018) reports.
    ls = LoopState(state.params, evaluate(
        predict, state.params, splits["val"], c.tasks, tcfg.eval_batch_size,
        "val"))
    if workdir is not None and jax.process_index() == 0:
      (workdir / "metrics.jsonl").unlink(missing_ok=True)
  else:
    log(f"resuming from the checkpoint of step {restored.step}")
    state, ls = restored.state, LoopState.restore(restored)
    if jax.process_index() == 0:
      _keep_evals_until(workdir / "metrics.jsonl", restored.step)
  state = jax.device_put(state, shardings)  # restored states are unsharded
  step = int(state.step)
  run_logger.start(step, resumed=restored is not None)
  batches = train_batches(splits["train"], tcfg.batch_size, cfg.seed,
                          start_step=step)
  # n extra batches per step: stream batches n*step .. n*step + n - 1.
  meta_split, prefixes = sampling.extra_batches(
      c.strategy, cfg.strategy.mode or c.strategy.default_mode)
  meta_batches = None
  if prefixes:
    if num_rows(splits[meta_split]) < tcfg.batch_size:
      raise ValueError(f"strategy {c.strategy.name!r} draws extra batches "
                       f"of {tcfg.batch_size} rows from the {meta_split!r} "
                       f"split, which has {num_rows(splits[meta_split])}; "
                       f"lower train.batch_size or set meta_split")
    meta_batches = train_batches(splits[meta_split], tcfg.batch_size,
                                 cfg.seed + META_SEED_OFFSET,
                                 start_step=len(prefixes) * step)
  status, diverged_at, compile_s = "done", None, None

  compile_start = time.time()
  with _progress(progress, tcfg.num_steps) as bar:
    bar_task = bar.add_task("training", total=tcfg.num_steps, completed=step)
    while step < tcfg.num_steps and not ls.stopped:
      batch = next(batches)
      if meta_batches is not None:
        batch = sampling.with_extra_batches(
            batch, {prefix: next(meta_batches) for prefix in prefixes})
      state, metrics = step_fn(state, parallel.shard_batch(
          parallel.process_slice(batch), mesh))
      step += 1
      faults.hit(step, "step")
      if compile_s is None:
        jax.block_until_ready(state)
        compile_s = time.time() - compile_start
      bar.advance(bar_task)
      last = step == tcfg.num_steps
      if step % tcfg.log_every == 0 or step % tcfg.eval_every == 0 or last:
        host = jax.device_get(metrics)
        if int(state.diverged_step) >= 0:
          status, diverged_at = "diverged", int(state.diverged_step)
          break
        desc = " ".join(f"{n}={float(host['loss/' + n]):.4g}"
                        for n in c.task_names)
        bar.update(bar_task, description=desc)
        ls.train_log.append({"step": step, **{
            k: float(v) for k, v in host.items()
            if k.startswith(("weight/", "cos/", "loss/"))}})
        run_logger.scalars(step, {k: v for k, v in ls.train_log[-1].items()
                                  if k != "step"})
      value = None
      if step % tcfg.eval_every == 0 or last:
        ev = evaluate(predict, state.params, splits["val"], c.tasks,
                      tcfg.eval_batch_size, "val")
        value = ev[tcfg.selection_metric]
        record = {"step": step, **ev, **ls.train_log[-1]}
        run_logger.scalars(step, ev)
        if workdir is not None and jax.process_index() == 0:
          run_files.append_jsonl(workdir / "metrics.jsonl", record)
        ls.evaluated(step, value, state.params, c.selection_mode,
                     tcfg.patience)
      ending = last or ls.stopped
      if saver.due(step, ending) or (stop and not ending and saver.keep and
                                     saver.store is not None):
        saver.save(step, state, ls, value)
        faults.hit(step, "save")
      if stop and not ending:  # SIGTERM/SIGINT: saver.close() waits for it
        raise preemption.Preempted(stop.signum, step, saver.keep > 0 and
                                   saver.store is not None)
  out: dict[str, Any] = {"status": status, "steps": step,
                         "best_step": ls.best_step,
                         "compile_time_s": compile_s}
  if status == "diverged":
    out["diverged_step"] = diverged_at
    out["error"] = f"non-finite loss at step {diverged_at}"
  faults.hit(step, "final")
  final = {}
  for split in ("val", "test"):
    final.update(evaluate(predict, ls.best_params, splits[split], c.tasks,
                          tcfg.eval_batch_size, split))
  final["val/loss_ratio_sum"] = float(sum(
      final[f"val/{n}/loss"] / ls.initial[f"val/{n}/loss"]
      for n in c.task_names))
  out["metrics"] = final
  # A done run's losses are finite: NaN ones mean damaged selected
  # parameters (e.g. a checkpoint's `best` read without checksums), not a
  # result.  (Metrics undefined on the data, e.g. AUC without positives,
  # may stay NaN.)
  bad = sorted(k for k, v in final.items()
               if k.endswith("loss") and not math.isfinite(v))
  if status == "done" and bad:
    out["status"] = status = "failed"
    out["error"] = (f"non-finite final metrics ({', '.join(bad)}): the "
                    f"selected parameters are damaged; run it again")
  run_logger.scalars(step, final, prefix="final/")
  out["initial_val_losses"] = {n: ls.initial[f"val/{n}/loss"]
                               for n in c.task_names}
  out["selection"] = {"metric": tcfg.selection_metric,
                      "value": ls.best_value,
                      "mode": c.selection_mode}
  out["train_log"] = ls.train_log
  out["strategy_state"] = _small_tree(state.strategy_state)
  if init_info is not None:
    out["init_from"] = init_info
  if workdir is not None and status != "failed":
    out["params_dir"] = str(checkpoints.save_params(workdir, ls.best_params))
  return out
