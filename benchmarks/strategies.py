"""Train-step time of every weighting strategy, K tasks, both gradient modes.

    python -m benchmarks.strategies [--quick] [--json OUT]

One model (shared-bottom MLP, 2 x 512 units, 64-unit towers) on a fixed
random regression batch; for each strategy, K in {2, 4, 8, 16} and gradient
mode ("params": per-task Jacobian of the shared parameters, K backward
passes batched with vmap; "params_unrolled": the same K passes unrolled in
the one jitted step; "rep": gradients
w.r.t. the shared representation; loss strategies have one mode, "loss"),
the median time of the full jitted train step (strategy + Adam update).
The baseline `loop_k_grads` computes the K per-task gradients with K separate
jitted `jax.grad` calls and sums them, as a PyTorch-style loop of K backward
passes would. Writes JSON {"device", "rows": [{"strategy", "k", "mode",
"step_ms", "compile_ms"}]} and a Markdown summary.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks.common import describe_device, time_step, write_outputs
from mtrec_jax import weighting
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.features import FeatureSpec
from mtrec_jax.registry import STRATEGIES
from mtrec_jax.tasks.spec import TaskSpec
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.step import make_train_step, task_losses

INPUT_DIM = 256


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


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true",
                 help="K in {2, 4}, fewer timed steps (a smoke run)")
  p.add_argument("--json", help="output JSON path (default benchmarks/results/)")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--ks", default="", help="comma-separated K values")
  p.add_argument("--iters", type=int, default=30, help="timed steps per row")
  p.add_argument("--partial", help="rewrite this file with the rows so far "
                 "after every measurement")
  p.add_argument("--strategies", default="",
                 help="comma-separated subset (default: all registered)")
  args = p.parse_args(argv)
  ks = (2, 4) if args.quick else (2, 4, 8, 16)
  if args.ks:
    ks = tuple(int(k) for k in args.ks.split(","))
  iters, warmup = (5, 2) if args.quick else (args.iters, 5)
  names = args.strategies.split(",") if args.strategies else STRATEGIES.names()
  optimizer = optax.adam(1e-3)
  rows = []
  for k in ks:
    model, tasks, batch, params = setup(k, args.batch_size)
    base = loop_baseline(model, tasks, optimizer)
    ms, first = time_step(base, (params, optimizer.init(params)), batch,
                          warmup=warmup, iters=iters)
    rows.append({"strategy": "loop_k_grads", "k": k, "mode": "params",
                 "step_ms": ms, "compile_ms": first})
    print(rows[-1], flush=True)
    for name in names:
      strategy = weighting.build(name)
      modes = (("loss",) if strategy.kind == "loss" else
               ("params", "params_unrolled", "rep"))
      for mode in modes:
        step = jax.jit(make_train_step(
            model, tasks, strategy, optimizer,
            {"loss": "", "params_unrolled": "params"}.get(mode, mode),
            jacobian="unrolled" if mode == "params_unrolled" else "vmap"))
        state = state_lib.create(params, optimizer, strategy, k,
                                 jax.random.PRNGKey(1))
        ms, first = time_step(lambda s, b: step(s, b)[0], state, batch,
                              warmup=warmup, iters=iters)
        rows.append({"strategy": name, "k": k, "mode": mode, "step_ms": ms,
                     "compile_ms": first})
        print(rows[-1], flush=True)
        if args.partial:  # keep what was measured if the run is cut short
          pathlib.Path(args.partial).write_text(json.dumps(rows) + "\n")
  device = describe_device()
  write_outputs("strategies", {"device": device, "batch_size": args.batch_size,
                               "rows": rows}, args.json, summary(rows, device))


def summary(rows, device: str) -> str:
  """Markdown: step ms per strategy/mode (rows) and K (columns), plus the
  two ratios the design promises."""
  ks = sorted({r["k"] for r in rows})
  keyed = {(r["strategy"], r["mode"], r["k"]): r["step_ms"] for r in rows}
  lines = [f"# Strategy step time (ms, median) on {device}", "",
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
  par = [v for (s, m, kk), v in keyed.items()
         if m.startswith("params") and kk == k and s != "loop_k_grads"]
  if mean and rep:
    lines += ["", f"At K={k}: rep-mode step / mean step: max "
              f"{max(rep) / mean:.2f}, median {np.median(rep) / mean:.2f}."]
  if loop and par:
    lines += [f"At K={k}: params-mode step / loop of K gradient calls: max "
              f"{max(par) / loop:.2f}, median {np.median(par) / loop:.2f}."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
