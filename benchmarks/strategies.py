"""Train-step time of every weighting strategy, K tasks, both gradient modes.

    python -m benchmarks.strategies [--quick] [--ks 4] [--strategies a,b]
        [--json OUT] [--note 'what else ran']

One model (shared-bottom MLP, 2 x 512 units, 64-unit towers) on a fixed
random regression batch; for each strategy, K in {2, 4, 8, 16} and gradient
mode ("params": per-task Jacobian of the shared parameters, K backward
passes batched with vmap; "params_unrolled": the same K passes unrolled in
the one jitted step; "rep": gradients
w.r.t. the shared representation; loss strategies have one mode, "loss"),
the median time of the full jitted train step (strategy + Adam update),
every row of one K timed in interleaved rounds (`common.time_interleaved`).
The baseline `loop_k_grads` computes the K per-task gradients with K separate
jitted `jax.grad` calls and sums them, as a PyTorch-style loop of K backward
passes would.  The `engine_*` rows time the per-task gradient engine alone
(the K gradients, no strategy or update): the training engine
(`split_jacobian`, `engine_vmap` / `engine_unrolled`) vs
`engine_loop_k_grads`.

Every registered strategy runs in every mode it supports: strategies with
per-row state (`Strategy.row_state`) get a state shaped like the shared
parameters (params modes) or one example's representation (rep mode), as
in training; a mode the strategy's factory refuses (rep for MoCo and
DB-MTL) is listed as skipped; the extra batches a strategy reads per step
(Auto-Lambda's meta batch; MoDo's and SDMGrad's two more training batches,
params mode) are copies of the training batch; `alternating` gets a
per-group optimizer.  Variants (`VARIANTS`) get rows of their own next to
their strategy's: `modo_single_batch` and `sdmgrad_single_batch` are MoDo and
SDMGrad with `independent_batches=False` (one Jacobian of the step's own
batch, params modes; rep mode is single-batch already).  Writes JSON
{"device", "note", "rows": [{"strategy", "k", "mode", "step_ms",
"compile_ms"}], "skipped": [{"strategy", "mode", "why"}]} and a Markdown
summary (with a per-strategy table of the ratios at K=4).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks.common import describe_device, time_interleaved, write_outputs
from mtrec_jax import config as config_lib
from mtrec_jax import weighting
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.features import FeatureSpec
from mtrec_jax.registry import STRATEGIES
from mtrec_jax.tasks.spec import TaskSpec
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.optim import make_optimizer
from mtrec_jax.train.step import (make_train_step, split_jacobian,
                                  task_losses)
from mtrec_jax.weighting.alternating import freezes_groups
from mtrec_jax.weighting import sampling

INPUT_DIM = 256
# Row name -> (registered strategy, its hyperparameters, modes benchmarked):
# settings that change what a step computes, benchmarked beside the default.
VARIANTS = {
    "modo_single_batch": ("modo", {"independent_batches": False},
                          ("params", "params_unrolled")),
    "sdmgrad_single_batch": ("sdmgrad", {"independent_batches": False},
                             ("params", "params_unrolled")),
}


def setup(k: int, batch_size: int):
  cfg = default_model_config()
  cfg.name = "shared_bottom"
  cfg.bottom_hidden = (512, 512)
  cfg.tower_hidden = (64,)
  tasks = tuple(TaskSpec(f"t{i}", f"y{i}", "regression") for i in range(k))
  model = build_model(cfg, (FeatureSpec("x", "numeric", dim=INPUT_DIM),),
                      tuple((t.name, t.out_dim) for t in tasks))
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(batch_size, INPUT_DIM)).astype(np.float32)}
  for i in range(k):
    batch[f"y{i}"] = rng.normal(size=(batch_size,)).astype(np.float32)
  batch = jax.device_put(batch)
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  return model, tasks, batch, params


def loop_baseline(model, tasks, optimizer):
  """K separately jitted per-task gradient calls, then one summed update."""
  def loss_k(params, batch, k):
    out = model.apply({"params": params}, batch)
    return task_losses(out, batch, tasks)[k]
  grad_fns = [jax.jit(jax.grad(lambda p, b, k=k: loss_k(p, b, k)))
              for k in range(len(tasks))]

  @jax.jit
  def apply(params, opt_state, grads):
    total = jax.tree_util.tree_map(lambda *g: sum(g), *grads)
    updates, opt_state = optimizer.update(total, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(carry, batch):
    params, opt_state = carry
    grads = [g(params, batch) for g in grad_fns]
    return apply(params, opt_state, grads)
  return step


def engine_entries(model, tasks, params, k) -> list[tuple[dict, object, object]]:
  """The per-task gradient engine alone (no strategy, no optimizer): the
  training engine (`split_jacobian`: one forward, one tower backward, K
  shared backward passes vmapped or unrolled) vs K separately jitted
  `jax.grad` calls, all returning the K gradients."""
  def losses_fn(p, b):
    return task_losses(model.apply({"params": p}, b), b, tasks)

  def fused(p, b, engine):
    represent = lambda q: model.apply({"params": q}, b, method="represent")
    heads = lambda q, rep: task_losses(
        model.apply({"params": q}, rep, method="heads"), b, tasks)
    return split_jacobian(represent, heads, p, engine)[1:]

  def entry(name, fn):
    return ({"strategy": name, "k": k, "mode": "params"},
            lambda carry, b: (carry[0], fn(carry[0], b)), (params, None))

  out = [entry(f"engine_{e}", jax.jit(lambda p, b, e=e: fused(p, b, e)))
         for e in ("vmap", "unrolled")]
  grads = [jax.jit(jax.grad(lambda p, b, i=i: losses_fn(p, b)[i]))
           for i in range(k)]
  out.append(entry("engine_loop_k_grads",
                   lambda p, b: [g(p, b) for g in grads]))
  return out


def rep_row(model, params, batch) -> int:
  """One example's flattened representation size: the Jacobian row length
  that strategies with per-row state (`Strategy.row_state`) are built for in
  rep mode, as the train loop does (`loop.strategy_row`)."""
  rep = jax.eval_shape(lambda p: model.apply(
      {"params": p}, batch, train=False, method="represent"), params)
  return math.prod(rep.shape[2:])


def with_variants(names) -> list[str]:
  """`names` with each selected strategy's `VARIANTS` right after it."""
  return [row for name in names for row in
          (name, *(v for v, (base, _, _) in VARIANTS.items() if base == name))]


def build(name: str, **hparams):
  """The strategy as benchmarked (`name` a registered strategy or a row of
  `VARIANTS`).  DWA's epoch length and `alternating`'s per-group optimizer
  state (the base config's Adam, = optax.adam(1e-3)) decide what a step
  does, not what it costs; Auto-Lambda's look-ahead uses the benchmark's
  Adam learning rate."""
  if name in VARIANTS:
    base, variant, _ = VARIANTS[name]
    return build(base, **variant, **hparams)
  extra = ({"steps_per_epoch": 100} if name == "dwa" else
           {"virtual_lr": 1e-3} if name == "auto_lambda" else {})
  return weighting.build(name, **extra, **hparams)


def modes_of(name: str, strategy) -> tuple[tuple[str, ...], dict[str, str]]:
  """(the modes benchmarked, {mode: why it is skipped}).  Loss strategies
  have one mode; gradient strategies params, params_unrolled and rep, less
  rep where the factory refuses it (MoCo, DB-MTL: they mix gradients of
  earlier steps per parameter, which has no per-example representation
  form)."""
  if name in VARIANTS:
    return VARIANTS[name][2], {}
  if strategy.kind == "loss":
    return ("loss",), {}
  try:
    build(name, mode="rep")
  except ValueError as e:
    return ("params", "params_unrolled"), {"rep": str(e)}
  return ("params", "params_unrolled", "rep"), {}


def extra_feed(strategy, mode: str):
  """``batch -> the step's input``: the batch with the extra batches the
  strategy reads per step in this mode (`sampling.extra_batches`: Auto-Lambda's
  meta batch, MoDo's and SDMGrad's two more training batches in params
  mode), here copies of the batch itself (the cost does not depend on the
  values)."""
  _, prefixes = sampling.extra_batches(strategy, mode)
  if not prefixes:
    return lambda b: b
  return lambda b: sampling.with_extra_batches(b, {p: b for p in prefixes})


def step_entries(model, tasks, params, batch, k, names, optimizer, skipped):
  """Full train steps: the loop baseline, then every strategy and mode.
  Modes a strategy does not support go to `skipped` ({(name, mode): why})."""
  out = [({"strategy": "loop_k_grads", "k": k, "mode": "params"},
          loop_baseline(model, tasks, optimizer),
          (params, optimizer.init(params)))]
  for name in names:
    strategy = build(name)
    opt = (make_optimizer(config_lib.base_config().optimizer, 1,
                          groups=[t.name for t in tasks])
           if freezes_groups(strategy) else optimizer)
    modes, skip = modes_of(name, strategy)
    skipped.update({(name, m): why for m, why in skip.items()})
    for mode in modes:
      step = jax.jit(make_train_step(
          model, tasks, strategy, opt,
          {"loss": "", "params_unrolled": "params"}.get(mode, mode),
          jacobian="unrolled" if mode == "params_unrolled" else "vmap"))
      # Per-row state: shaped like the shared parameters in params mode
      # (create's default), like one example's representation in rep mode.
      row = (rep_row(model, params, batch)
             if mode == "rep" and strategy.row_state else None)
      state = state_lib.create(params, opt, strategy, k,
                               jax.random.PRNGKey(1), row)
      feed = extra_feed(strategy, "params" if mode == "params_unrolled"
                        else mode)
      out.append(({"strategy": name, "k": k, "mode": mode},
                  lambda s, b, step=step, feed=feed: step(s, feed(b))[0],
                  state))
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true",
                 help="K in {2, 4}, fewer timed steps (a smoke run)")
  p.add_argument("--json", help="output JSON path (default benchmarks/results/)")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--ks", default="", help="comma-separated K values")
  p.add_argument("--rounds", type=int, default=10,
                 help="interleaved timing rounds per K")
  p.add_argument("--iters", type=int, default=5,
                 help="timed steps per row and round")
  p.add_argument("--partial", help="rewrite this file with the rows so far "
                 "after every K")
  p.add_argument("--strategies", default="",
                 help="comma-separated subset, VARIANTS rows allowed "
                 "(default: all registered, each with its variants)")
  p.add_argument("--note", default="",
                 help="a line for the summary, e.g. what else was running")
  args = p.parse_args(argv)
  ks = (2, 4) if args.quick else (2, 4, 8, 16)
  if args.ks:
    ks = tuple(int(k) for k in args.ks.split(","))
  rounds, iters = (2, 3) if args.quick else (args.rounds, args.iters)
  names = (args.strategies.split(",") if args.strategies else
           with_variants(STRATEGIES.names()))
  optimizer = optax.adam(1e-3)
  rows, skipped = [], {}
  load = {"start": os.getloadavg()}
  for k in ks:
    model, tasks, batch, params = setup(k, args.batch_size)
    entries = (engine_entries(model, tasks, params, k) +
               step_entries(model, tasks, params, batch, k, names, optimizer,
                            skipped))
    timed = time_interleaved([(fn, st) for _, fn, st in entries], batch,
                             rounds=rounds, iters=iters)
    for (meta, _, _), (ms, first) in zip(entries, timed):
      rows.append({**meta, "step_ms": ms, "compile_ms": first})
      print(rows[-1], flush=True)
    if args.partial:  # keep what was measured if the run is cut short
      pathlib.Path(args.partial).write_text(json.dumps(rows) + "\n")
  load["end"] = os.getloadavg()
  device = describe_device()
  skips = [{"strategy": n, "mode": m, "why": why}
           for (n, m), why in skipped.items()]
  write_outputs("strategies", {"device": device, "batch_size": args.batch_size,
                               "rounds": rounds, "iters": iters,
                               "note": args.note, "rows": rows,
                               "skipped": skips, "load_average": load},
                args.json, summary(rows, device, skips, args.note, load))


def summary(rows, device: str, skipped=(), note: str = "",
            load=None) -> str:
  """Markdown: step ms per strategy/mode (rows) and K (columns), the modes
  skipped and why, the two ratios the design promises (over all strategies
  and per strategy); `load`: the machine's load averages (1, 5, 15 min) at
  the start and end of the measurement."""
  ks = sorted({r["k"] for r in rows})
  keyed = {(r["strategy"], r["mode"], r["k"]): r["step_ms"] for r in rows}
  lines = [f"# Strategy step time (ms, median) on {device}", ""]
  if note:
    lines += [note, ""]
  if load:
    lines += ["Load average (1, 5, 15 min): " + "; ".join(
        f"at the {when} " + " / ".join(f"{x:.2f}" for x in load[when])
        for when in ("start", "end") if when in load) + ".", ""]
  lines += [
           "| strategy | mode | " + " | ".join(f"K={k}" for k in ks) + " |",
           "|---|---|" + "---|" * len(ks)]
  for strategy, mode in dict.fromkeys((r["strategy"], r["mode"]) for r in rows):
    cells = [f"{keyed[(strategy, mode, k)]:.2f}" if (strategy, mode, k) in keyed
             else "-" for k in ks]
    lines.append(f"| {strategy} | {mode} | " + " | ".join(cells) + " |")
  k = 4 if 4 in ks else ks[0]
  mean = keyed.get(("mean", "loss", k))
  loop = keyed.get(("loop_k_grads", "params", k))
  rep = [v for (s, m, kk), v in keyed.items() if m == "rep" and kk == k]
  if mean and rep:
    lines += ["", f"At K={k}: rep-mode step / mean step: max "
              f"{max(rep) / mean:.2f}, median {np.median(rep) / mean:.2f}."]
  for mode in ("params", "params_unrolled"):
    par = [v for (s, m, kk), v in keyed.items() if m == mode and kk == k
           and s != "loop_k_grads"]
    if loop and par:
      lines.append(f"At K={k}: {mode} step / loop of K gradient calls (both "
                   f"with the Adam update): max {max(par) / loop:.2f}, median "
                   f"{np.median(par) / loop:.2f}.")
  engine_loop = keyed.get(("engine_loop_k_grads", "params", k))
  for engine in ("vmap", "unrolled"):
    fused = keyed.get((f"engine_{engine}", "params", k))
    if fused and engine_loop:
      lines.append(f"At K={k}: engine alone ({engine}) / K separate gradient "
                   f"calls: {fused / engine_loop:.2f}.")
  if skipped:
    lines += ["", "Modes not benchmarked (the strategy refuses them):", ""]
    lines += [f"- {s['strategy']} {s['mode']}: {s['why']}" for s in
              {(s["strategy"], s["mode"]): s for s in skipped}.values()]
  lines += ratio_table(keyed, k)
  return "\n".join(lines) + "\n"


def ratio_table(keyed, k) -> list[str]:
  """Per strategy at K=k: its loss or rep step / the mean step (the promise:
  rep <= 1.3), its params steps / the loop of K gradient calls (the promise:
  params_unrolled <= 0.8)."""
  mean = keyed.get(("mean", "loss", k))
  loop = keyed.get(("loop_k_grads", "params", k))
  names = dict.fromkeys(s for (s, m, kk) in keyed if kk == k and m in
                        ("loss", "rep", "params_unrolled")
                        and not s.startswith("engine_"))
  if not (mean and loop and names):
    return []
  def cell(name, mode, base):
    v = keyed.get((name, mode, k))
    return "-" if v is None else f"{v / base:.2f}"
  lines = ["", f"Ratios at K={k} per strategy:", "",
           "| strategy | loss / mean | rep / mean | params / loop | "
           "params_unrolled / loop |", "|---|---|---|---|---|"]
  for name in names:
    lines.append(f"| {name} | {cell(name, 'loss', mean)} | "
                 f"{cell(name, 'rep', mean)} | {cell(name, 'params', loop)} | "
                 f"{cell(name, 'params_unrolled', loop)} |")
  return lines


if __name__ == "__main__":
  main()
