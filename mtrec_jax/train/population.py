"""Population training: runs of one grid that share shapes, trained as one
jitted program (`mtrec run NAME --population N`).

Members of a population are runs whose configs differ only in

* ``seed`` (initialisation, dropout keys, data order, and the dataset itself
  where the builder draws it from the seed),
* ``optimizer.learning_rate``,
* float-valued ``strategy.hparams.*`` (a float, or a list of floats such as
  `static`'s ``weights``);

anything else (model, shapes, strategy name, batch size, number of steps,
integer hyper-parameters, which may be counts or shapes) puts runs in
different populations (`group_runs`).

The train state of the M members is stacked on a leading member axis and the
solo train step (`step.make_train_step`, unchanged) is ``jax.vmap``-ed over
it: each member keeps its own PRNG key (folded with the step as in a solo
run), its own batches (its seed's shuffle of its own dataset, stacked on the
member axis), and, for the keys above that differ within the population, its
own value as a traced array (the optimizer and the strategy are rebuilt
inside the vmapped step from it; keys equal across members stay Python
constants, as in a solo run).  With several devices (one process), the member
axis is sharded over a ``population`` mesh axis (`population_mesh`).
Validation and test predictions are vmapped the same way; the metrics are
then computed per member by the solo `evaluate`.

Each member is its own run: its own run folder, config.json, metrics.jsonl,
checkpoints (written from its slice of the state, so `--resume` restores it
alone or as part of a population), TensorBoard events and result.json with
the same fields as `loop.train_and_evaluate` plus ``population`` (size,
index, member run names); its config hash is the solo run's.  Model
selection, early stopping and divergence are per member: a member that
stops early or diverges is finished at that step (its result and best
parameters are fixed then) while the others go on (its slice keeps being
computed, unused).  ``wall_time_s`` of a member is the population's wall
time; ``compile_time_s`` is the population program's.

Equal to solo training up to float rounding: XLA may order a batched matmul's
sums differently from the unbatched one, so metrics agree to a relative
~1e-5 after a few hundred steps on the tests' models (tests/train/
test_population.py), not bit for bit.

What falls back to one run at a time (`PopulationTrainer` says so in the
run's log): several processes; a strategy whose step reads extra batches
(Auto-Lambda's meta batches, double sampling);
a strategy factory that branches in Python on a hyper-parameter that differs
within the population (it cannot take a traced value); members whose states
or data differ in shape; `--resume` where the members' newest checkpoints
are at different steps.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import pathlib
import time
import traceback
import types
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mtrec_jax import config as config_lib
from mtrec_jax import weighting
from mtrec_jax.data.pipeline import num_rows, train_batches
from mtrec_jax.population_axis import POPULATION_AXIS
from mtrec_jax.registry import STRATEGIES
from mtrec_jax.results import loggers
from mtrec_jax.results import provenance as provenance_lib
from mtrec_jax.results import run_files
from mtrec_jax.train import checkpoints
from mtrec_jax.train import compiler
from mtrec_jax.train import faults
from mtrec_jax.train import loop
from mtrec_jax.train import parallel
from mtrec_jax.train import preemption
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.evaluate import evaluate, make_predict_fn
from mtrec_jax.train.optim import learning_rate_schedule, make_optimizer
from mtrec_jax.train.step import make_train_step
from mtrec_jax.weighting.alternating import freezes_groups

POPULATION = "population"  # the mesh axis of the member dimension
LEARNING_RATE = "optimizer.learning_rate"
HPARAMS = "strategy.hparams."


class NotPopulable(Exception):
  """These runs cannot train as one population (the reason in words); the
  trainer trains them one at a time instead."""


# ----------------------------------------------------------------------------
# Which runs form a population.


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _is_float(v) -> bool:
  if isinstance(v, list):
    return bool(v) and all(_is_float(x) for x in v)
  return isinstance(v, float)


def member_keys(config) -> dict[str, Any]:
  """The keys of `config` that may differ within a population, with their
  values: seed, the learning rate and float strategy hyper-parameters."""
  flat = _flat(config_lib.to_dict(config))
  out = {"seed": flat["seed"], LEARNING_RATE: flat[LEARNING_RATE]}
  out.update({k: v for k, v in flat.items()
              if k.startswith(HPARAMS) and _is_float(v)})
  return out


def population_signature(config) -> str:
  """What members of one population share: the whole config but
  `member_keys` (the names of the float hyper-parameters stay in it)."""
  flat = _flat(config_lib.to_dict(config))
  for k in member_keys(config):
    flat[k] = "<member>"
  return json.dumps(flat, sort_keys=True)


def group_runs(runs: Sequence, size: int | None = None) -> list[list[int]]:
  """Indices of `runs` (grid order) grouped into populations of at most
  `size` members (None: no limit) sharing `population_signature`; each
  population in the order of its first run."""
  if size is not None and size < 1:
    raise ValueError(f"population size must be >= 1, got {size}")
  groups: dict[str, list[int]] = {}
  for i, run in enumerate(runs):
    groups.setdefault(population_signature(run.config), []).append(i)
  out = []
  for members in groups.values():
    step = size or len(members)
    out += [members[j:j + step] for j in range(0, len(members), step)]
  return sorted(out, key=lambda g: g[0])


def varying(configs: Sequence) -> dict[str, np.ndarray]:
  """{key: values [M, ...] as float32} for the member keys (but the seed)
  whose values differ between `configs`."""
  keys = [member_keys(c) for c in configs]
  out = {}
  for k in keys[0]:
    if k == "seed":
      continue
    values = [kk.get(k) for kk in keys]
    if any(v is None for v in values):
      raise NotPopulable(f"{k} is set in some members only")
    if any(v != values[0] for v in values):
      try:
        out[k] = np.asarray(values, np.float32)
      except ValueError as e:  # lists of different lengths
        raise NotPopulable(f"{k} differs in shape between members") from e
  return out


def population_mesh(size: int, devices=None) -> jax.sharding.Mesh | None:
  """A 1-D ``population`` mesh over the most devices (of this process) that
  split `size` members evenly; None with one device."""
  devices = list(jax.local_devices() if devices is None else devices)
  n = max(d for d in range(1, len(devices) + 1) if size % d == 0)
  if n == 1:
    return None
  return jax.make_mesh((n,), (POPULATION,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


# ----------------------------------------------------------------------------
# The member step: the solo step, rebuilt from traced hyper-parameters.


def _strategy(config, steps_per_epoch: int, overrides: dict, opt_cfg):
  """`loop.build_strategy` with `overrides` (traced values) over the config's
  hyper-parameters (tests check the two agree on concrete values)."""
  hparams = config_lib.to_dict(config.strategy.hparams)
  hparams = {k: (tuple(v) if isinstance(v, list) else v)
             for k, v in hparams.items()}
  hparams.update(overrides)
  factory = STRATEGIES.get(config.strategy.name)
  takes = inspect.signature(factory).parameters
  if "steps_per_epoch" in takes and "steps_per_epoch" not in hparams:
    hparams["steps_per_epoch"] = int(steps_per_epoch)
  if "lr_schedule" in takes:
    hparams.setdefault("lr_schedule", learning_rate_schedule(
        opt_cfg, config.train.num_steps))
  return weighting.build(config.strategy.name, **hparams)


def _step_kwargs(config) -> dict:
  """The solo loop's keyword arguments of `make_train_step` for `config`."""
  tcfg = config.train
  kwargs = {"jacobian": parallel.jacobian_engine(tcfg.jacobian_engine),
            "rep_gramian": config.strategy.get("rep_gramian", "rows")}
  kwargs["dropout_bits"] = tcfg.dropout_bits
  return kwargs


class _Section(types.SimpleNamespace):
  """A config section as attributes (and `.get`), whose values may be
  tracers (a ConfigDict checks their types)."""

  def __init__(self, values: dict):
    super().__init__(**values)

  def get(self, key, default=None):
    return getattr(self, key, default)

  def __contains__(self, key):
    return hasattr(self, key)


def make_member_step(c: loop.Components, keys: Sequence[str]) -> Callable:
  """``step(state, batch, hp) -> (state, metrics)`` for one member: the solo
  train step of `c` with the values ``hp[key]`` (traced) for `keys`."""
  cfg = c.config
  keys = tuple(keys)
  groups = c.task_names if freezes_groups(c.strategy) else None

  def step(state, batch, hp):
    opt_cfg = _Section(config_lib.to_dict(cfg.optimizer))
    if LEARNING_RATE in keys:
      opt_cfg.learning_rate = hp[LEARNING_RATE]
    optimizer = (make_optimizer(opt_cfg, cfg.train.num_steps, groups=groups)
                 if LEARNING_RATE in keys else c.optimizer)
    overrides = {k[len(HPARAMS):]: hp[k] for k in keys
                 if k.startswith(HPARAMS)}
    strategy = (_strategy(cfg, c.steps_per_epoch, overrides, opt_cfg)
                if overrides else c.strategy)
    solo = make_train_step(c.model, c.tasks, strategy, optimizer,
                           cfg.strategy.mode, **_step_kwargs(cfg))
    return solo(state, batch)

  return step


# ----------------------------------------------------------------------------
# Helpers over the member axis.


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: int):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def _where(mask, new, old):
  """Per member: `new` where mask[i], else `old` (leading member axis)."""
  mask = jnp.asarray(mask)

  def pick(a, b):
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

  return jax.tree_util.tree_map(pick, new, old)


def _stack_arrays(arrays: Sequence[dict]) -> dict[str, np.ndarray]:
  keys = set(arrays[0])
  for a in arrays[1:]:
    if set(a) != keys or any(np.shape(a[k]) != np.shape(arrays[0][k])
                             for k in keys):
      raise NotPopulable("the members' datasets differ in columns or shapes")
  return {k: np.stack([np.asarray(a[k]) for a in arrays]) for k in keys}


class _Evaluator:
  """Vmapped predictions of every member, then each member's metrics by the
  solo `evaluate` (on its own split), replayed from them."""

  def __init__(self, c: loop.Components, comps, sharding):
    self.c, self.comps = c, comps
    predict = make_predict_fn(c.model, c.tasks)
    self.attrs = {"aux_names": predict.aux_names,
                  "aux_eval_tasks": predict.aux_eval_tasks}
    self.shared = all(m.dataset is c.dataset for m in comps)
    vm = jax.vmap(lambda p, b, i: predict(p, b, i),
                  in_axes=(0, None if self.shared else 0, None),
                  axis_name=POPULATION_AXIS)
    self.fn = jax.jit(vm)  # sharded as the params are
    self.splits = {}

  def _split(self, split):
    if split not in self.splits:
      if self.shared:
        self.splits[split] = dict(self.c.dataset.splits[split])
      else:
        self.splits[split] = _stack_arrays(
            [m.dataset.splits[split] for m in self.comps])
    return self.splits[split]

  def __call__(self, params, split: str) -> list[dict[str, float]]:
    arrays = self._split(split)
    n = num_rows(self.c.dataset.splits[split])
    size = self.c.config.train.eval_batch_size
    cache = []
    for index, start in enumerate(range(0, n, size)):
      if self.shared:
        batch = {k: v[start:start + size] for k, v in arrays.items()}
      else:
        batch = {k: v[:, start:start + size] for k, v in arrays.items()}
      cache.append(jax.device_get(self.fn(params, batch, index)))
    out = []
    for i, m in enumerate(self.comps):
      def replay(p, b, index, i=i):
        return _member(cache[index], i)
      replay.__dict__.update(self.attrs)
      out.append(evaluate(replay, None, m.dataset.splits[split], m.tasks,
                          size, split))
    return out


# ----------------------------------------------------------------------------
# Training a population.


class _Member:
  """One member's run: its files, checkpoints, loggers and bookkeeping."""

  def __init__(self, index, claimed, experiment: str):
    self.index = index
    self.c: loop.Components = claimed.prepared
    self.workdir = pathlib.Path(claimed.workdir)
    self.grid = dict(claimed.run.grid)
    self.name = claimed.run.name
    self.experiment = experiment
    self.done = False
    self.status, self.diverged_at = "done", None
    self.best_value, self.best_step, self.bad_evals = None, 0, 0
    self.stopped = False
    self.history: list[dict] = []
    self.initial = None
    self.steps = None
    self.final_state = None
    self.saver = None
    self.logger = None

  def header(self, size: int, names) -> dict:
    cfg = self.c.config
    return {"experiment": self.experiment, "grid": self.grid,
            "seed": int(cfg.seed), "config_hash": config_lib.config_hash(cfg),
            "strategy": cfg.strategy.name, "model": cfg.model.name,
            "tasks": [t.name for t in self.c.tasks],
            "aux_tasks": [t.name for t in self.c.aux_tasks],
            **provenance_lib.provenance(),
            "population": {"size": size, "index": self.index,
                           "members": list(names)}}


def _check(comps) -> None:
  if jax.process_count() > 1:
    raise NotPopulable("several processes (multi-host runs train one run at "
                       "a time)")
  for m in comps:
    # Extra batches a step reads (Auto-Lambda's meta batches, a double
    # sampled strategy's second batch) are not stacked here.
    if (getattr(m.strategy, "meta_update", None) is not None
        or getattr(m.strategy, "sample_prefixes", ())):
      raise NotPopulable(f"strategy {m.strategy.name!r} reads extra batches "
                         f"each step")
  sigs = {population_signature(m.config) for m in comps}
  if len(sigs) > 1:
    raise NotPopulable("the runs differ in more than seeds, learning rates "
                       "and float strategy hyper-parameters")


def _init(m: _Member):
  """The member's initial state (with `init_from`), as the solo loop."""
  c = m.c
  state = loop.init_state(c)
  info = None
  if c.config.init_from:
    params, copied = checkpoints.merge_params(
        state.params, checkpoints.load_params(c.config.init_from),
        tuple(c.config.init_scope))
    state = state_lib.create(params, c.optimizer, c.strategy,
                             len(c.task_names), state.rng,
                             loop.strategy_row(c, params))
    info = {"path": str(c.config.init_from),
            "read": str(checkpoints.params_dir(c.config.init_from)),
            "copied": len(copied),
            "total": len(jax.tree_util.tree_leaves(params))}
  return state, info


def train_population(claimed: Sequence, *, experiment: str = "",
                     report=None, resume: bool = False,
                     progress: bool = False,
                     log: Callable[[str], None] = lambda m: None,
                     devices=None) -> list[dict]:
  """Trains the claimed runs (`sweep.Claimed`, whose `prepared` is a
  `loop.Components`) as one population; one result dict per run, in order
  (each also in its run folder's result.json).

  Raises `NotPopulable` before writing anything when they cannot train
  together; any other exception after writing a failed result.json for
  every member (as `loop.train_and_evaluate` does for one run)."""
  start = time.time()
  members = [_Member(i, c, experiment) for i, c in enumerate(claimed)]
  comps = [m.c for m in members]
  _check(comps)
  c0 = comps[0]
  hp = varying([m.config for m in comps])
  inits = [_init(m) for m in members]
  try:
    state0 = _stack([s for s, _ in inits])
  except (ValueError, TypeError) as e:
    raise NotPopulable(f"the members' train states differ in shape: "
                       f"{e}") from e
  size = len(members)
  mesh = population_mesh(size, devices)
  sharding = None if mesh is None else NamedSharding(mesh, P(POPULATION))
  vstep = jax.vmap(make_member_step(c0, tuple(hp)),
                   axis_name=POPULATION_AXIS)
  options = compiler.compiler_options(
      c0.config.train.get("compiler", "default"))  # as the solo loop
  if sharding is None:
    jitted = jax.jit(vstep, compiler_options=options)
  else:
    jitted = jax.jit(vstep, in_shardings=(sharding, sharding, sharding),
                     out_shardings=(sharding, sharding),
                     compiler_options=options)
  bs = c0.config.train.batch_size
  train0 = c0.dataset.splits["train"]
  batch_spec = {k: jax.ShapeDtypeStruct((size, bs) + np.shape(v)[1:],
                                        np.asarray(v[:1]).dtype)
                for k, v in train0.items()}
  hp_dev = {k: jnp.asarray(v) for k, v in hp.items()}
  if sharding is not None:
    hp_dev = jax.device_put(hp_dev, sharding)
  compile_start = time.time()
  try:
    step_fn = jitted.lower(state0, batch_spec, hp_dev).compile()
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError,
          jax.errors.TracerIntegerConversionError) as e:
    raise NotPopulable(f"the step cannot take {', '.join(hp)} as traced "
                       f"values ({type(e).__name__})") from e
  compile_s = time.time() - compile_start
  names = [m.name for m in members]
  results = [m.header(size, names) for m in members]
  with contextlib.ExitStack() as stack:
    for m in members:
      m.saver = loop._Saver(m.c, m.workdir, resume, log)
      stack.callback(m.saver.close)
    restored = [None] * size
    if resume:
      restored = [m.saver.store.restore_latest(s, s.params)
                  if m.saver.store is not None else None
                  for m, (s, _) in zip(members, inits)]
      steps = {None if r is None else r.step for r in restored}
      stopped = any(r is not None and r.meta["stopped"] for r in restored)
      if len(steps) > 1 or stopped:
        raise NotPopulable(f"--resume: the members' checkpoints are at "
                           f"different steps ({sorted(map(str, steps))}) or "
                           f"a member had stopped")
    for m, res in zip(members, results):
      m.workdir.mkdir(parents=True, exist_ok=True)
      run_files.write_json(m.workdir / "config.json",
                           config_lib.to_dict(m.c.config))
      m.logger = stack.enter_context(loggers.make_loggers(m.c.config,
                                                          m.workdir))
    try:
      with preemption.watch() as stop:
        outs = _train(members, inits, restored, step_fn, state0, hp_dev,
                      sharding, compile_s, progress, log, stop)
      for m, res, out in zip(members, results, outs):
        res.update(out)
        if report is not None:
          res["report"] = report(res, m.c.dataset)
    except preemption.Preempted as e:  # each member checkpointed, as solo
      for m, res in zip(members, results):
        res.update(status="preempted", error=str(e), steps=e.step,
                   wall_time_s=time.time() - start)
        run_files.write_json(m.workdir / "result.json", res)
      raise
    except Exception as e:
      for m, res in zip(members, results):
        res.update(status="failed", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=20),
                   wall_time_s=time.time() - start)
        run_files.write_json(m.workdir / "result.json", res)
      raise
  for m, res in zip(members, results):
    res["wall_time_s"] = time.time() - start
    run_files.write_json(m.workdir / "result.json", res)
  return results


def _train(members, inits, restored, step_fn, state, hp, sharding,
           compile_s, progress, log, stop=None) -> list[dict]:
  """The population's loop; `stop` (`preemption.Flag`): on SIGTERM/SIGINT
  every member still training checkpoints this step and `Preempted` is
  raised, as `loop._train` does for one run."""
  c0 = members[0].c
  tcfg = c0.config.train
  evaluator = _Evaluator(c0, [m.c for m in members], sharding)
  if restored[0] is None:
    best = state.params
    # Validation losses before training (GradNorm's L_k(0), as solo).
    for m, ev in zip(members, evaluator(state.params, "val")):
      m.initial = ev
      (m.workdir / run_files.METRICS_FILE).unlink(missing_ok=True)
  else:
    log(f"resuming the population from the checkpoint of step "
        f"{restored[0].step}")
    state = _stack([r.state for r in restored])
    best = _stack([r.best_params for r in restored])
    for m, r in zip(members, restored):
      meta = r.meta
      m.best_value, m.best_step = meta["best_value"], meta["best_step"]
      m.bad_evals, m.stopped = meta["bad_evals"], meta["stopped"]
      m.history, m.initial = meta["train_log"], meta["initial"]
      loop._keep_evals_until(m.workdir / run_files.METRICS_FILE, r.step)
  if sharding is not None:
    state = jax.device_put(state, sharding)
    best = jax.device_put(best, sharding)
  step = int(np.asarray(state.step)[0])
  for m in members:
    m.logger.start(step, resumed=restored[0] is not None)
  streams = [train_batches(m.c.dataset.splits["train"], tcfg.batch_size,
                           m.c.config.seed, start_step=step) for m in members]
  first, loop_start = True, time.time()
  with loop._progress(progress, tcfg.num_steps) as bar:
    task = bar.add_task("population", total=tcfg.num_steps, completed=step)
    while step < tcfg.num_steps and not all(m.done for m in members):
      parts = [next(s) for s in streams]
      batch = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
      state, metrics = step_fn(state, batch, hp)
      step += 1
      faults.hit(step, "step")
      if first:
        jax.block_until_ready(state)
        compile_s += time.time() - loop_start  # as solo: with step 1
        first = False
      bar.advance(task)
      last = step == tcfg.num_steps
      active = [m for m in members if not m.done]
      logged = (step % tcfg.log_every == 0 or step % tcfg.eval_every == 0
                or last)
      if logged:
        host = jax.device_get(metrics)
        diverged = np.asarray(jax.device_get(state.diverged_step))
        for m in active:
          if diverged[m.index] >= 0:
            m.status, m.diverged_at = "diverged", int(diverged[m.index])
            _finish(m, state, step)
            continue
          m.history.append({"step": step, **{
              k: float(v[m.index]) for k, v in host.items()
              if k.startswith(("weight/", "cos/", "loss/"))}})
          m.logger.scalars(step, {k: v for k, v in m.history[-1].items()
                                  if k != "step"})
        active = [m for m in active if not m.done]
      values = {}
      if active and (step % tcfg.eval_every == 0 or last):
        evs = evaluator(state.params, "val")
        improved = np.zeros(len(members), bool)
        for m in active:
          ev = evs[m.index]
          value = values[m.index] = ev[tcfg.selection_metric]
          m.logger.scalars(step, ev)
          run_files.append_jsonl(m.workdir / run_files.METRICS_FILE,
                                 {"step": step, **ev, **m.history[-1]})
          if loop._better(value, m.best_value, m.c.selection_mode):
            improved[m.index] = True
            m.best_value, m.best_step, m.bad_evals = value, step, 0
          else:
            m.bad_evals += 1
            m.stopped = bool(tcfg.patience and m.bad_evals >= tcfg.patience)
        if improved.any():
          best = _where(improved, state.params, best)
      preempt = bool(stop) and not last
      for m in active:
        if m.saver.due(step, last or m.stopped) or (
            preempt and not m.stopped and m.saver.keep and
            m.saver.store is not None):
          # The solo run's checkpoint: its state, best parameters and meta.
          m.saver.store.save(
              step, _member(state, m.index), _member(best, m.index),
              {"best_value": m.best_value, "best_step": m.best_step,
               "bad_evals": m.bad_evals, "stopped": m.stopped,
               "train_log": list(m.history), "initial": m.initial},
              values.get(m.index))
          m.saver.last_save = time.monotonic()
        if m.stopped or last:
          _finish(m, state, step)
      if preempt and not all(m.done for m in members):
        raise preemption.Preempted(stop.signum, step, all(
            m.saver.keep > 0 and m.saver.store is not None for m in members))
  for m in members:
    if not m.done:  # a resumed population already at num_steps
      _finish(m, state, step)
  finals = [dict() for _ in members]
  for split in ("val", "test"):
    for f, ev in zip(finals, evaluator(best, split)):
      f.update(ev)
  outs = []
  for m, (_, info), final in zip(members, inits, finals):
    final["val/loss_ratio_sum"] = float(sum(
        final[f"val/{n}/loss"] / m.initial[f"val/{n}/loss"]
        for n in m.c.task_names))
    out = {"status": m.status, "steps": m.steps, "best_step": m.best_step,
           "compile_time_s": compile_s}
    if m.status == "diverged":
      out["diverged_step"] = m.diverged_at
      out["error"] = f"non-finite loss at step {m.diverged_at}"
    out["metrics"] = final
    # As solo: NaN losses of a done run mean damaged selected parameters.
    bad = sorted(k for k, v in final.items()
                 if k.endswith("loss") and not math.isfinite(v))
    if m.status == "done" and bad:
      out["status"] = "failed"
      out["error"] = (f"non-finite final metrics ({', '.join(bad)}): the "
                      f"selected parameters are damaged; run it again")
    m.logger.scalars(m.steps, final, prefix="final/")
    out["initial_val_losses"] = {n: m.initial[f"val/{n}/loss"]
                                 for n in m.c.task_names}
    out["selection"] = {"metric": tcfg.selection_metric,
                        "value": m.best_value, "mode": m.c.selection_mode}
    out["train_log"] = m.history
    out["strategy_state"] = loop._small_tree(m.final_state)
    if info is not None:
      out["init_from"] = info
    out["params_dir"] = str(checkpoints.save_params(
        m.workdir, jax.device_get(_member(best, m.index))))
    outs.append(out)
  return outs


def _finish(m: _Member, state, step: int) -> None:
  """Fixes member m's outcome at `step` (its best parameters are no longer
  updated, its strategy state is the one of this step)."""
  m.done, m.steps = True, step
  m.final_state = jax.device_get(_member(state.strategy_state, m.index))


# ----------------------------------------------------------------------------
# The sweep's trainer.


class PopulationTrainer:
  """A `sweep.Trainer` that trains each population of a shard's runs
  (`group_runs`, at most `size` members; None: as many as share a
  signature) as one program; a population that cannot (`NotPopulable`) is
  trained one run at a time, as `sweep.LoopTrainer` does."""

  def __init__(self, size: int | None = None, devices=None):
    if size is not None and size < 1:
      raise ValueError(f"--population {size}: give a size >= 1 or 'auto'")
    self.size, self.devices = size, devices

  def prepare(self, run):
    return loop.Components(run.config)

  def batches(self, runs):
    return group_runs(runs, self.size)

  def train(self, claimed, *, experiment, resume, progress, log):
    from mtrec_jax import sweep
    if len(claimed) > 1:
      try:
        with warnings.catch_warnings():
          warnings.simplefilter("always", checkpoints.CheckpointWarning)
          out = train_population(
              claimed, experiment=experiment.name, report=experiment.report,
              resume=resume, progress=progress, log=log,
              devices=self.devices)
        log(f"trained as one population of {len(claimed)}")
        return out
      except NotPopulable as e:
        log(f"not one population ({e}): training its {len(claimed)} runs "
            f"one at a time")
    return sweep.LoopTrainer().train(claimed, experiment=experiment,
                                     resume=resume, progress=progress,
                                     log=log)


def trainer(text: str | None) -> PopulationTrainer | None:
  """The trainer of `mtrec run --population TEXT`: None (the flag absent:
  the sweep's default, one run at a time); 'auto': populations as large as
  the grid allows; 'N': at most N members each."""
  if text is None:
    return None
  if text == "auto":
    return PopulationTrainer(None)
  try:
    n = int(text)
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"--population {text!r}: give the most runs to train "
                     f"together (an integer >= 1) or 'auto'")
  return PopulationTrainer(n)
