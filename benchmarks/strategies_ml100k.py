"""Train-step time of every row of `ml100k-strategies`, on its own model.

    MTREC_DATA_DIR=../shared/data python -m benchmarks.strategies_ml100k \\
        [--rounds 3] [--iters 2] [--rows mean,mgda] [--note 'what else ran']

Why: the grid's table has each run's own seconds per step, but the runs
trained across many sessions under whatever load the machine had, so
those figures cannot rank the strategies' cost.  `benchmarks.strategies`
ranks them on a synthetic MLP; this times the real thing: for every row of
`ml100k-strategies` (`experiments/ml100k_strategies.py`, seed 0's config as
the grid runs it, so each strategy's default gradient mode), the full jitted
train step (forward, the strategy, AdamW) from one shared first batch, every
row timed in the same interleaved rounds (`common.time_interleaved`, three
untimed calls opening each turn), so a burst of background load slows them
alike.  The extra batches a strategy reads per step (Auto-Lambda's meta
batch, MoDo's and SDMGrad's two more training batches) are copies of the
training batch, as in `benchmarks.strategies`.  One program per row: the
population axis is not timed here (`benchmarks.population` does that).

Writes benchmarks/results/strategies_ml100k_<platform>.{json,md}: rows
{"strategy", "mode", "step_ms", "relative" (to `mean`), "compile_s",
"gflop" (XLA's count for one step; a loop body counted once)}.
"""
from __future__ import annotations

import argparse
import os
import time

import jax

from benchmarks.common import (describe_device, load_line, md_table,
                               time_interleaved, write_outputs)
from benchmarks.strategies import extra_feed
from benchmarks.sequence_step import first_batch
from benchmarks.throughput import OtherLoad, step_flops

def row_configs(rows: list[str] | None) -> dict:
  """{row name: seed 0's config} of ml100k-strategies, in grid order."""
  from mtrec_jax import experiment as experiment_lib
  from mtrec_jax import sweep
  exp = experiment_lib.get_experiment("ml100k-strategies")
  runs = sweep.Selection(seeds=(0,)).runs(exp)
  configs = {r.grid["strategy"]: r.config for r in runs}
  if rows:
    unknown = sorted(set(rows) - set(configs))
    if unknown:
      raise SystemExit(f"--rows: no such row {unknown}; rows of "
                       f"ml100k-strategies: {', '.join(configs)}")
    configs = {k: v for k, v in configs.items() if k in rows}
  return configs


def entries(configs: dict):
  """[(name, mode, (step fn, state), facts)], one first batch shared."""
  from mtrec_jax.train import loop
  from mtrec_jax.train.step import make_train_step
  out, batch = [], None
  for name, cfg in configs.items():
    c = loop.Components(cfg)
    state = loop.init_state(c)
    batch = batch if batch is not None else first_batch(c)
    mode = c.config.strategy.mode or c.strategy.default_mode
    feed = extra_feed(c.strategy, mode)
    fed = feed(batch)
    fn = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                                 c.config.strategy.mode))
    t0 = time.perf_counter()
    compiled = fn.lower(state, fed).compile()
    facts = {"compile_s": time.perf_counter() - t0,
             "gflop": step_flops(compiled) / 1e9}
    step = (lambda s, b, fn=compiled, feed=feed: fn(s, feed(b))[0])
    mode = mode if c.strategy.uses_gradients else "loss"
    out.append((name, mode, (step, state), facts))
    print(f"compiled {name} ({mode}) in {facts['compile_s']:.1f} s",
          flush=True)
  return out, batch


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--iters", type=int, default=2)
  p.add_argument("--rows", default="",
                 help="comma-separated rows (default: every row)")
  p.add_argument("--json", default=None)
  p.add_argument("--note", default="",
                 help="a line for the Markdown (e.g. other jobs running)")
  args = p.parse_args(argv)
  os.environ.setdefault("MTREC_DATA_DIR", "../shared/data")
  configs = row_configs([r for r in args.rows.split(",") if r] or None)
  if "mean" not in configs:
    raise SystemExit("--rows must include mean (the ratios' baseline)")
  built, batch = entries(configs)
  load_before = os.getloadavg()
  with OtherLoad() as other:
    timed = time_interleaved([e[2] for e in built], batch,
                             rounds=args.rounds, iters=args.iters, settle=3)
  base = timed[[e[0] for e in built].index("mean")][0]
  rows = [{"strategy": name, "mode": mode, "step_ms": ms,
           "relative": ms / base, **facts}
          for (name, mode, _, facts), (ms, _) in zip(built, timed)]
  payload = {"device": describe_device(), "rounds": args.rounds,
             "iters": args.iters, "note": args.note, "rows": rows,
             "other_load": other.value, "loadavg_before": list(load_before),
             "loadavg_after": list(os.getloadavg()),
             "cpu_count": os.cpu_count()}
  write_outputs(f"strategies_ml100k_{jax.devices()[0].platform}", payload,
                args.json, summary(payload))


def summary(payload: dict) -> str:
  lines = [f"# Train step of every ml100k-strategies row on "
           f"{payload['device']}", "",
           "The grid's model (all-positions Transformer, next item + rating "
           "+ like + genre, batch 128, fused softmax, one encoder pass), "
           "seed 0's config per row, each strategy in its grid mode; median "
           f"of {payload['rounds']} interleaved rounds x {payload['iters']} "
           "steps, three untimed steps opening each turn.", ""]
  if payload["note"]:
    lines += [payload["note"], ""]
  lines += md_table(
      ["row", "mode", "step ms", "x mean", "compile s", "GFLOP/step"],
      [[r["strategy"], r["mode"], f"{r['step_ms']:.0f}",
        f"{r['relative']:.2f}", f"{r['compile_s']:.1f}", f"{r['gflop']:.2f}"]
       for r in payload["rows"]])
  lines += ["", load_line(payload), ""]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
