"""The sweep: an experiment's grid, claimed run by run from the results store,
trained, and recorded. The library behind `mtrec run`::

    from mtrec_jax import sweep
    outcome = sweep.run_sweep("quickstart", selection=sweep.Selection(
        seeds=(0, 1)), store="results/mtrec.db", workdir="runs")
    outcome.counts  # {'done': 4}

`run_sweep` goes through these steps, in order:

1. expand: the experiment's grid, narrowed by a `Selection` (the command
   line's --set, --seeds, --only); every config is resolved here.
2. shard: this process keeps grid entries j with j % N == I (`--shard I/N`,
   one array-job task each), so shards sharing a store split the grid.
3. prepare: the trainer builds every run of the shard (`Trainer.prepare`), so
   a bad name or key fails before anything (run folders, the store) is
   written.
4. for each batch of runs (`Trainer.batches`): claim each run from the store
   (skipped when done or diverged there, unless `force`, or when another live
   process holds it), hand the list of claimed runs to `Trainer.train` while a
   heartbeat thread keeps their claims fresh, and record each outcome:
   `Store.finish` with the eval records of the run's metrics.jsonl, or
   `Store.fail`; when the trainer raised after writing a failed result.json
   (as `train_and_evaluate` does), that result is stored, with its evals.
   A failed run never stops the sweep; a KeyboardInterrupt marks the claimed
   runs failed and stops it; SIGTERM/SIGINT (`train.preemption`) make the
   trainer checkpoint and raise `Preempted`: the claimed runs are marked
   preempted (the next sweep claims them at once) and the sweep stops.
5. collect: one result per grid run, in grid order (stored, else what this
   process trained, else `missing`), for the summary table.

Where later work slots in: population training (several runs of one grid
that share shapes, trained as one program) is a `Trainer` whose `batches`
groups those runs and whose `train` receives all of a batch's claimed runs at
once, returning one result per run (each stored as its own run, as here).
Preemption (SIGTERM) is a trainer that checkpoints and raises `Preempted`;
the `except` around `Trainer.train` in `_train_batch` marks its claimed runs.

Multi-host (SLURM, MPI, a TPU pod; `Hosts`): every process runs the same
sweep; process 0 alone claims runs and writes the store (one SQLite writer,
even on a shared file system) and broadcasts each claim, so every process
trains the same runs together; the others hold a `_FollowerStore` that
writes nothing and return no table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import sqlite3
import threading
import time
import warnings
from typing import Any, Callable, Mapping, Protocol, Sequence

from mtrec_jax import config as config_lib
from mtrec_jax import config_checks
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.results import records
from mtrec_jax.results import run_files
from mtrec_jax.results import store as store_lib
from mtrec_jax.results.status import (DIVERGED, DONE, FAILED, FINAL,
                                      PREEMPTED, RUNNING)
from mtrec_jax.train import preemption

# How often a training process refreshes its runs' heartbeats in the store
# at most; and at least 5 times per Store.stale_after_s, after which a silent
# run counts as abandoned.
HEARTBEAT_EVERY_S = 60.0
SKIPPED = "skipped"  # a RunOutcome's status when this process did not train it

run_key = records.run_key  # (config hash, seed): how the store names a run
Log = Callable[[str], None]


# ----------------------------------------------------------------------------
# Which runs.


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which runs of an experiment's grid: `overrides` ('key=value' strings or
  a {key: value} mapping) apply to every run, after the grid's own values;
  `seeds` replaces the experiment's seeds; `only` keeps runs whose axis value
  (as text) is one of the given ones, e.g. {'model': ['mmoe']}."""
  overrides: Sequence[str] | Mapping[str, Any] = ()
  seeds: Sequence[int] | None = None
  only: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)

  def runs(self, exp: experiment_lib.Experiment) -> list[experiment_lib.Run]:
    """The selected runs, each config value-checked (`config_checks`).

    Refused: an override of a key a grid axis sets (it would relabel every
    run: the grid says model=mmoe, the config trains another model), and a
    seed given twice (one run counted twice, a zero spread)."""
    _check_overrides(exp, self.overrides)
    if self.seeds is not None:
      twice = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
      if twice:
        raise ValueError(f"--seeds: seed {', '.join(map(str, twice))} given "
                         f"more than once; each seed is one run (write e.g. "
                         f"--seeds 0,1 or 0-2)")
    runs = exp.runs(overrides=self.overrides, seeds=self.seeds,
                    only=self.only)
    if not runs:
      raise ValueError(f"no runs of {exp.name!r} match the --only/--seeds "
                       f"filters")
    for run in runs:
      config_checks.check_values(run.config, f"run {run.name}")
    return runs


def _check_overrides(exp: experiment_lib.Experiment,
                     overrides: Sequence[str] | Mapping[str, Any]) -> None:
  """Raises when an override sets a key that a grid axis (or the seeds)
  sets: the axis value would name runs that the override changed."""
  keys = (list(overrides) if isinstance(overrides, Mapping) else
          [str(o).split("=", 1)[0].strip() for o in overrides])
  for key in keys:
    if key == "seed":
      raise ValueError("--set seed=...: the seed is the grid's seed axis; "
                       "pick seeds with --seed N or --seeds 0-2")
    for axis in exp.axes:
      axis_keys = ({k for label in axis.labels()
                    for k in axis.overrides(label)} if axis.key is None
                   else {axis.key})
      if key in axis_keys:
        values = ",".join(str(v) for v in axis.labels())
        raise ValueError(
            f"--set {key}: grid axis {axis.name!r} of {exp.name!r} sets this "
            f"key, so the runs would be labelled with its values but train "
            f"another; to keep some of its values use --only "
            f"{axis.name}=V1,V2 (values: {values})")


def parse_shard(text: str | None) -> tuple[int, int]:
  """'2/8' -> (2, 8): this process runs grid entries j with j % 8 == 2;
  None: the SLURM array task's shard (`array_job_shard`), else (0, 1)."""
  if text is None:
    return array_job_shard() or (0, 1)
  m = re.fullmatch(r"\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*", text)
  if not m:
    raise ValueError(f"--shard {text!r}: write I/N, this job's shard index "
                     f"and the number of shards, e.g. --shard 0/4 ... "
                     f"--shard 3/4")
  return check_shard((int(m.group(1)), int(m.group(2))), f"--shard {text!r}")


def array_job_shard(env: Mapping[str, str] | None = None
                    ) -> tuple[int, int] | None:
  """This SLURM array task's shard (I, N); None outside an array job.

  `mtrec run` without --shard reads it: the tasks of ``--array=MIN-MAX``
  (ids MIN, MIN+STEP, ...: SLURM_ARRAY_TASK_MIN/_MAX/_STEP) are shards
  0..N-1, N = SLURM_ARRAY_TASK_COUNT, so ``--array=0-7`` and ``1-8`` both
  give 8 shards.  An array that is no such range (``--array=1,4,9``) is an
  error naming --shard.
  """
  env = os.environ if env is None else env
  if not env.get("SLURM_ARRAY_TASK_ID"):
    return None
  what = (f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} (of "
          f"{env.get('SLURM_ARRAY_TASK_COUNT')})")
  try:
    task, n = (int(env[k]) for k in ("SLURM_ARRAY_TASK_ID",
                                     "SLURM_ARRAY_TASK_COUNT"))
    low = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    step = int(env.get("SLURM_ARRAY_TASK_STEP", 1)) or 1
    high = int(env.get("SLURM_ARRAY_TASK_MAX", low + step * (n - 1)))
  except (KeyError, ValueError) as e:
    raise ValueError(f"{what}: cannot read its task id and count ({e}); "
                     f"pass --shard I/N") from None
  i, off = divmod(task - low, step)
  if off or high != low + step * (n - 1) or not low <= task <= high:
    raise ValueError(f"{what}: the array is not a range MIN-MAX[:STEP] "
                     f"holding this task id, so its task ids are no shard "
                     f"indexes; pass --shard I/N")
  return check_shard((i, n), what)


def check_shard(shard: tuple[int, int], what: str = "shard") -> tuple[int, int]:
  i, n = shard
  if n < 1:
    raise ValueError(f"{what}: the number of shards N must be at least 1")
  if not 0 <= i < n:
    raise ValueError(f"{what}: the shard index must satisfy 0 <= I < N, so "
                     f"0..{n - 1} here (shards count from 0, like an array "
                     f"job's task id with --array=0-{n - 1})")
  return int(i), int(n)


# ----------------------------------------------------------------------------
# Who trains: the trainer and the hosts.


@dataclasses.dataclass(frozen=True)
class Claimed:
  """A run this sweep claimed: the store's attempt id, its run folder and
  what `Trainer.prepare` built for it."""
  run: experiment_lib.Run
  run_id: int | None  # None on a follower host (it writes no store)
  workdir: pathlib.Path
  prepared: Any


class Trainer(Protocol):
  """Trains claimed runs. `prepare` is called for every run of the shard
  before anything is written (raise there for a bad config); `batches`
  groups the shard's runs (indices) into what `train` gets at once; `train`
  returns one result dict per claimed run, in order (status done, diverged
  or failed), or raises: then each run of the batch is recorded failed."""

  def prepare(self, run: experiment_lib.Run) -> Any: ...

  def batches(self, runs: Sequence[experiment_lib.Run]
              ) -> list[list[int]]: ...

  def train(self, claimed: Sequence[Claimed], *,
            experiment: experiment_lib.Experiment, resume: bool,
            progress: bool, log: Log) -> list[dict]: ...


class LoopTrainer:
  """One run at a time with `mtrec_jax.train.loop.train_and_evaluate`."""

  def prepare(self, run):
    from mtrec_jax.train import loop
    return loop.Components(run.config)

  def batches(self, runs):
    return [[i] for i in range(len(runs))]

  def train(self, claimed, *, experiment, resume, progress, log):
    from mtrec_jax.train import checkpoints, loop

    def show(message, category, *args, **kwargs):
      if issubclass(category, checkpoints.CheckpointWarning):
        log(f"warning: {message}")
      else:
        shown(message, category, *args, **kwargs)

    out = []
    for c in claimed:
      shown = warnings.showwarning
      with warnings.catch_warnings():
        # Checkpoint trouble (a damaged one skipped) is said in the run's
        # output, every time, rather than once as a Python warning.
        warnings.simplefilter("always", checkpoints.CheckpointWarning)
        warnings.showwarning = show
        out.append(loop.train_and_evaluate(
            c.run.config, c.workdir, experiment=experiment.name,
            grid=c.run.grid, progress=progress, components=c.prepared,
            report=experiment.report, resume=resume, log=log))
    return out


class Hosts(Protocol):
  """The processes of one job: `primary` (process 0) claims and stores;
  `agree(run_id)` returns process 0's claim on every process."""
  primary: bool

  def agree(self, run_id: int | None) -> int | None: ...


class JaxHosts:
  """The JAX processes of this job, joined first when a cluster launch is
  detected (`parallel.initialize_distributed`)."""

  def __init__(self):
    import jax
    from mtrec_jax.train import parallel
    parallel.initialize_distributed()
    self.primary = jax.process_index() == 0
    self._many = jax.process_count() > 1

  def agree(self, run_id):
    if not self._many:
      return run_id
    import numpy as np
    from jax.experimental import multihost_utils
    value = multihost_utils.broadcast_one_to_all(
        np.int64(-1 if run_id is None else run_id))
    return None if int(value) < 0 else int(value)


class _FollowerStore:
  """What a host other than process 0 holds: the runs it trains are claimed
  and stored by process 0, so it writes nothing."""
  path = None

  def finish(self, *args, **kwargs) -> None:
    pass

  def fail(self, *args, **kwargs) -> None:
    pass

  def preempt(self, *args, **kwargs) -> None:
    pass


class _Heartbeat:
  """Refreshes claimed runs' heartbeats while they train, from a thread with
  its own connection, so that a run longer than the store's `stale_after_s`
  is not taken for abandoned and claimed by another shard. Best effort: a
  failed heartbeat never stops the training."""

  def __init__(self, path: pathlib.Path, run_ids: Sequence[int],
               every_s: float | None = None):
    self.path, self.run_ids = path, list(run_ids)
    self.every_s = HEARTBEAT_EVERY_S if every_s is None else every_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True,
                                    name=f"mtrec-heartbeat-{self.run_ids}")

  def _loop(self) -> None:
    store = None
    try:
      while not self._stop.wait(self.every_s):
        try:
          store = store or store_lib.Store(self.path, lock_timeout_s=10.0)
          for run_id in self.run_ids:
            store.heartbeat(run_id)
        except (sqlite3.Error, ValueError):
          pass  # retried at the next beat
    finally:
      if store is not None:
        store.close()

  def __enter__(self) -> _Heartbeat:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join(timeout=15.0)


# ----------------------------------------------------------------------------
# The outcome.


@dataclasses.dataclass(frozen=True)
class RunOutcome:
  """What happened to one run of this process's shard."""
  run: experiment_lib.Run
  status: str  # done | diverged | failed | preempted (here) | skipped
  result: dict | None = None  # the trainer's result; None when skipped
  detail: str = ""  # why skipped, or the error
  stored: bool = True  # False: trained, but the store refused the result

  @property
  def ok(self) -> bool:
    """Trained to an outcome the store kept (done or diverged), or skipped."""
    return self.status in (*FINAL, SKIPPED) and self.stored


@dataclasses.dataclass(frozen=True)
class SweepOutcome:
  experiment: experiment_lib.Experiment
  runs: tuple  # the selected grid, every shard's runs
  shard: tuple[int, int]
  outcomes: tuple[RunOutcome, ...]  # this shard's runs, in grid order
  results: tuple[dict, ...]  # one per grid run (primary only; else empty)
  root: pathlib.Path  # run folders: root/<run name>@<config hash>
  store_path: pathlib.Path | None  # None on a follower host
  primary: bool

  @property
  def trained(self) -> list[RunOutcome]:
    return [o for o in self.outcomes if o.status != SKIPPED]

  @property
  def skipped(self) -> list[RunOutcome]:
    return [o for o in self.outcomes if o.status == SKIPPED]

  @property
  def failed(self) -> list[RunOutcome]:
    """Runs that raised, or whose result the store refused (not diverged:
    a diverged run is a finding, recorded as such)."""
    return [o for o in self.outcomes if not o.ok]

  @property
  def counts(self) -> dict[str, int]:
    """status -> number of grid runs, over `results` (the whole grid)."""
    out: dict[str, int] = {}
    for r in self.results:
      out[r["status"]] = out.get(r["status"], 0) + 1
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------
# The sweep.


def run_sweep(experiment: experiment_lib.Experiment | str, *,
              selection: Selection = Selection(),
              store: str | pathlib.Path | store_lib.Store | None = None,
              workdir: str | pathlib.Path = "runs",
              shard: tuple[int, int] = (0, 1), force: bool = False,
              resume: bool = False, progress: bool = False,
              log: Log | None = None, trainer: Trainer | None = None,
              hosts: Hosts | None = None,
              provenance: Mapping[str, Any] | None = None,
              stale_after_s: float | None = None) -> SweepOutcome:
  """Trains this shard's runs of `experiment` that the store does not have.

  store: a path (default $MTREC_STORE or ./results/mtrec.db) or an open
  `Store` (left open). workdir: run folders go to workdir/<experiment>/<run
  name>@<config hash> (`Run.dir_name`: one folder per config). force:
  train runs already done or diverged again (a new attempt). resume:
  continue each run from its newest usable checkpoint. log: hears each
  run's progress lines (on process 0 only). trainer: default `LoopTrainer`;
  hosts: default `JaxHosts` (joins a cluster launch first); provenance:
  what `Store.claim` records, default `provenance.provenance()`.
  stale_after_s: how long a silent heartbeat means a dead owner whose runs
  are taken over (default `store.stale_after()`: $MTREC_STALE_AFTER_S or
  300 s); this process beats 5 times as often (at most every 60 s).
  """
  hosts = hosts or JaxHosts()
  _DATA_IDS.clear()  # data may have changed since an earlier sweep
  say = (log or (lambda message: None)) if hosts.primary else (
      lambda message: None)  # process 0 reports for every process
  exp = (experiment_lib.get_experiment(experiment)
         if isinstance(experiment, str) else experiment)
  shard = check_shard(shard)
  runs = selection.runs(exp)
  mine = [r for j, r in enumerate(runs) if j % shard[1] == shard[0]]
  trainer = trainer or LoopTrainer()
  prepared = [trainer.prepare(r) for r in mine]
  if provenance is None:
    from mtrec_jax.results import provenance as provenance_lib
    provenance = provenance_lib.provenance()
  root = pathlib.Path(workdir) / exp.name
  if shard[1] > 1:
    say(f"shard {shard[0]}/{shard[1]}: {len(mine)} of the {len(runs)} runs "
        f"of {exp.name}")
  outcomes: dict[int, RunOutcome] = {}
  if not hosts.primary:
    ctx = contextlib.nullcontext(_FollowerStore())
  elif isinstance(store, store_lib.Store):
    ctx = contextlib.nullcontext(store)
  else:
    ctx = store_lib.Store(store if store is not None
                          else store_lib.default_store_path(),
                          stale_after_s=stale_after_s)
  with ctx as db:
    for batch in trainer.batches(mine):
      claimed = []
      for i in batch:
        run = mine[i]
        say(f"[{i + 1}/{len(mine)}] {exp.name} {run.name}")
        run_id = hosts.agree(_claim(db, exp.name, run, provenance, force)
                             if hosts.primary else None)
        if run_id is None:
          reason = (_skip_reason(db, exp.name, run) if hosts.primary
                    else "skipped: process 0 did not claim it")
          say("  " + reason)
          outcomes[i] = RunOutcome(run, SKIPPED, detail=reason)
        else:
          if resume and hosts.primary and not getattr(hosts, "_many", False):
            _adopt_legacy_folder(root, run, say)
          claimed.append((i, Claimed(run, run_id if hosts.primary else None,
                                     root / run.dir_name, prepared[i])))
      if claimed:
        done = _train_batch(db, trainer, exp, [c for _, c in claimed],
                            resume=resume, progress=progress, log=say)
        outcomes.update(zip([i for i, _ in claimed], done))
        if any(o.status == PREEMPTED for o in done):
          break  # the job is going away: claim nothing more
    ordered = tuple(outcomes[i] for i in sorted(outcomes))
    results = (_grid_results(db, exp.name, runs, ordered) if hosts.primary
               else ())
  return SweepOutcome(exp, tuple(runs), shard, ordered, tuple(results),
                      root, getattr(db, "path", None), hosts.primary)


def _adopt_legacy_folder(root: pathlib.Path, run, log: Log) -> None:
  """Moves an unfinished run's folder of the layout before issue 16
  (root/<run name>, no config hash) to root/<run name>@<config hash>, so
  --resume continues it; only when its config.json has this run's hash and
  it holds no params/ (a finished run's, which init_from may name, stays)."""
  old, new = root / run.name, root / run.dir_name
  if new.exists() or not (old / "config.json").is_file() or (
      old / "params").exists():
    return
  try:
    same = store_lib.stored_config_hash(run_files.read_json(
        old / "config.json")) == config_lib.config_hash(run.config)
  except (OSError, ValueError, TypeError, KeyError):
    return
  if same:
    old.rename(new)
    log(f"  moved the unfinished run folder {old} to {new.name} (run "
        f"folders now carry the config hash)")


_DATA_IDS: dict[str, dict | None] = {}


def data_identity(run) -> dict | None:
  """The run's data identity (`data.identity`), computed once per data
  section in this process (which also loads each dataset once), so the
  hash a run is claimed with is the one its result records.

  A run that reads item texts through a pre-trained text model
  (``model.item_repr`` other than 'id') trained on those weights too: their
  content hash (`models.text.model_identity`) is recorded as
  ``text_model`` and folded into ``hash``, so a run is not taken as done
  on other weights, and `serve.load_run` can check the ones it finds."""
  model = config_lib.to_dict(run.config.model)
  text = (model.get("item_repr", "id") != "id") and model.get("text")
  key = json.dumps([config_lib.to_dict(run.config.data), text or None],
                   sort_keys=True)
  if key not in _DATA_IDS:
    from mtrec_jax.data import identity
    ident = identity.identity(run.config)
    if text:
      from mtrec_jax.models import item_text
      ident = item_text.with_text_model(ident, run.config.model)
    _DATA_IDS[key] = ident
  return _DATA_IDS[key]


def _claim(store, exp_name: str, run, provenance, force: bool) -> int | None:
  config_hash, seed = run_key(run)
  data = data_identity(run)
  return store.claim(exp_name, run.name, run.grid,
                     config_lib.to_dict(run.config), config_hash, seed,
                     dict(provenance), force=force,
                     data_hash=data and data["hash"])


def with_data_changes(store, exp_name: str, runs, rows) -> list:
  """`Store.status` rows of `runs`, each done or diverged run whose final
  attempt trained on other data than the run's data now (`data_identity`)
  saying so in its detail: `mtrec run` trains it again (`Store.claim`;
  an unknown hash on either side counts as the same data)."""
  _DATA_IDS.clear()  # as run_sweep: the data now
  ran_on = {r["run_id"]: (r.get("data") or {}).get("hash")
            for r in store.results(exp_name)}
  out = []
  for run, row in zip(runs, rows):
    was = ran_on.get(row.run_id)
    now = (data_identity(run) or {}).get("hash") if was else None
    if row.status in FINAL and was and now and was != now:
      row = row._replace(detail=f"trained on other data ({was}; now "
                         f"{now}): the next mtrec run trains it again")
    out.append(row)
  return out


def _skip_reason(store, exp_name: str, run) -> str:
  """Why `claim` returned None for a run, in words."""
  st = store.status(exp_name, [(run.name, *run_key(run))])[0]
  if st.status in FINAL:
    return (f"skipped: already {st.status} in the store (run id {st.run_id}, "
            f"attempt {st.attempts}); --force runs it again")
  if st.status == RUNNING:
    return f"skipped: another process is running it ({st.detail})"
  return f"skipped: the store did not hand it out ({st.status})"


def _train_batch(store, trainer: Trainer, exp, claimed: Sequence[Claimed], *,
                 resume: bool, progress: bool, log: Log) -> list[RunOutcome]:
  """Trains one batch of claimed runs and records each: a RunOutcome each."""
  started = time.time()
  ids = [c.run_id for c in claimed if c.run_id is not None]
  beat = (_Heartbeat(store.path, ids, min(HEARTBEAT_EVERY_S,
                                           store.stale_after_s / 5))
          if store.path is not None and ids else contextlib.nullcontext())
  try:
    with beat:
      results = trainer.train(claimed, experiment=exp, resume=resume,
                              progress=progress,
                              log=lambda m: log("  " + m))
    if len(results) != len(claimed):
      raise ValueError(f"the trainer returned {len(results)} results for "
                       f"{len(claimed)} claimed runs")
  except preemption.Preempted as e:
    log(f"  {e}")
    out = []
    for c in claimed:
      try:
        store.preempt(c.run_id, str(e))
      except ValueError as refused:  # taken over meanwhile
        log(f"  {refused}")
      out.append(RunOutcome(c.run, PREEMPTED, None, str(e)))
    return out
  except KeyboardInterrupt:
    for c in claimed:
      store.fail(c.run_id, "interrupted (KeyboardInterrupt)")
    raise
  except Exception as e:  # the sweep carries on; the store says failed
    log(f"  failed: {type(e).__name__}: {e}")
    out = []
    for c in claimed:
      res = _failed_result(c.workdir, started, run_key(c.run)[0])
      if res is None:
        store.fail(c.run_id, f"{type(e).__name__}: {e}")
      else:
        _record(store, c, res, log)
      out.append(RunOutcome(c.run, FAILED, res, f"{type(e).__name__}: {e}"))
    return out
  out = []
  for c, res in zip(claimed, results):
    if res.get("status") != DONE:
      log(f"  {res.get('status')}: {res.get('error', '')}")
    stored = _record(store, c, res, log)
    status = res.get("status") if res.get("status") in (
        DONE, DIVERGED) else FAILED
    out.append(RunOutcome(c.run, status, res, res.get("error") or "",
                          stored))
  return out


def _record(store, claimed: Claimed, res: dict, log: Log) -> bool:
  """finish() with the run's eval records; False (and the attempt marked
  failed) when the store refuses the result."""
  evals = run_files.read_evals(claimed.workdir / run_files.METRICS_FILE)
  data = data_identity(claimed.run)
  if data is not None:  # part of the result's provenance
    res.setdefault("data", data)
    path = claimed.workdir / "result.json"  # the run folder's copy too
    if path.is_file():  # (only process 0 records, and wrote it)
      run_files.write_json(path, {**run_files.read_json(path),
                                  "data": res["data"]})
  try:
    store.finish(claimed.run_id, res, evals=evals)
    return True
  except (TypeError, ValueError) as e:
    log(f"  could not store the result: {e}")
    store.fail(claimed.run_id, f"storing the result failed: {e}")
    return False


def _failed_result(workdir: pathlib.Path, since: float,
                   config_hash: str) -> dict | None:
  """The failed result.json the trainer wrote before raising, or None when
  there is none from this attempt (an older file is ignored)."""
  path = workdir / "result.json"
  try:
    if path.stat().st_mtime < since - 1.0:
      return None
    res = run_files.read_json(path)
  except (OSError, ValueError):
    return None
  if (not isinstance(res, dict) or res.get("status") != FAILED or
      res.get("config_hash", config_hash) != config_hash):
    return None
  return res


def _grid_results(store, exp_name: str, runs, outcomes) -> list[dict]:
  """One result per grid run: stored, else trained by this process, else a
  'missing' record, so a table shows the whole grid's progress."""
  try:
    stored = {(r.get("config_hash"), r.get("seed")): r
              for r in store.results(exp_name)}
  except store_lib.StoreLockedError:
    stored = {}
  ran = {run_key(o.run): o.result or {"status": o.status, "metrics": {}}
         for o in outcomes if o.status != SKIPPED}
  out = []
  for run in runs:
    key = run_key(run)
    res = stored.get(key) or ran.get(key)
    if res is None:
      res = records.missing_record(exp_name, run)
    out.append({**res, "grid": dict(run.grid), "run_name": run.name})
  return out
