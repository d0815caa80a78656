"""Population training vs one run at a time: the wall time of training M
seeds of one experiment as one population (`mtrec run NAME --population M`)
against training them one after another (plain `mtrec run NAME`).

    MTREC_DATA_DIR=... python -m benchmarks.population \\
        [--experiment census-strategies --only strategy=mean] [--steps 2000]

Both arms go through `sweep.run_sweep` (a fresh temporary store and run
folders each, checkpoints and evaluations as configured, TensorBoard off), so
the times are what a user waits for: data batches, compilation, training,
evaluations, checkpoints and stored results.  The datasets are loaded once
before timing (both arms read the same in-process cache).  The arms
alternate over `--rounds` rounds, so background load hits both alike; each
arm's time is the median over rounds.  The figure of merit is the
population's wall time over ONE solo run's (the mean of the M solo runs of a
round); also reported: the steady-state step time of the solo step and of
the population step, timed interleaved (`common.time_interleaved`), which
shows how much of the gain is shared compilation and dispatch rather than
step throughput.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import describe_device, time_interleaved, write_outputs
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.data.pipeline import train_batches
from mtrec_jax.train import loop, population


class _OneHost:
  primary = True

  def agree(self, run_id):
    return run_id


def _sweep(exp, selection, trainer, tmp):
  t0 = time.perf_counter()
  out = sweep.run_sweep(exp, selection=selection, store=f"{tmp}/store.db",
                        workdir=f"{tmp}/runs", hosts=_OneHost(),
                        provenance={}, trainer=trainer)
  wall = time.perf_counter() - t0
  bad = [o for o in out.outcomes if o.status != "done"]
  if bad:
    raise RuntimeError(f"runs not done: {[(o.run.name, o.detail) for o in bad]}")
  return wall, out


def step_times(runs, rounds: int, iters: int) -> tuple[float, float]:
  """(solo step ms, population step ms), steady state, interleaved."""
  comps = [loop.Components(r.config) for r in runs]
  c0 = comps[0]
  states = [loop.init_state(c) for c in comps]
  solo = jax.jit(population.make_member_step(c0, ()))
  pop = jax.jit(jax.vmap(population.make_member_step(c0, ())))
  batches = [next(train_batches(c.dataset.splits["train"],
                                c.config.train.batch_size, c.config.seed))
             for c in comps]
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  pop_state = population._stack(states)
  (solo_ms, _), (pop_ms, _) = time_interleaved(
      [(lambda s, b: solo(s, b[0], {})[0], states[0]),
       (lambda s, b: pop(s, b[1], {})[0], pop_state)],
      (batches[0], stacked), rounds=rounds, iters=iters)
  return solo_ms, pop_ms


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--experiment", default="census-strategies")
  p.add_argument("--only", default="strategy=mean",
                 help="axis=value picking one grid point")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=2000,
                 help="train.num_steps of every run")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--json", default=None, help="output JSON path")
  args = p.parse_args(argv)
  exp = experiment_lib.get_experiment(args.experiment)
  axis, _, value = args.only.partition("=")
  seeds = tuple(int(s) for s in args.seeds.split(","))
  selection = sweep.Selection(
      overrides={"train.num_steps": args.steps, "log.tensorboard": False},
      seeds=seeds, only={axis: [value]} if value else {})
  runs = selection.runs(exp)
  for r in runs:  # datasets loaded once, outside the timings
    loop.load_dataset(r.config)
  solo_walls, pop_walls, checks = [], [], []
  for _ in range(args.rounds):
    with tempfile.TemporaryDirectory(prefix="mtrec_pop_solo_") as tmp:
      wall, solo = _sweep(exp, selection, sweep.LoopTrainer(), tmp)
      solo_walls.append(wall)
    with tempfile.TemporaryDirectory(prefix="mtrec_pop_pop_") as tmp:
      wall, pop = _sweep(exp, selection,
                         population.PopulationTrainer(len(runs)), tmp)
      pop_walls.append(wall)
    # The population's members equal the solo runs (reported, not assumed).
    diff = max(abs(a["metrics"][k] - b["metrics"][k]) /
               max(abs(a["metrics"][k]), 1e-12)
               for a, b in zip(solo.results, pop.results)
               for k in a["metrics"])
    checks.append(diff)
  solo_ms, pop_ms = step_times(runs, rounds=3, iters=20)
  m = len(runs)
  solo_total = statistics.median(solo_walls)
  pop_wall = statistics.median(pop_walls)
  one = solo_total / m
  row = {"experiment": exp.name, "only": args.only, "seeds": list(seeds),
         "num_steps": args.steps, "members": m, "rounds": args.rounds,
         "solo_walls_s": solo_walls, "population_walls_s": pop_walls,
         "solo_total_s": solo_total, "one_run_s": one,
         "population_s": pop_wall, "ratio_to_one_run": pop_wall / one,
         "ratio_to_all_solo": pop_wall / solo_total,
         "max_rel_metric_diff": max(checks),
         "solo_step_ms": solo_ms, "population_step_ms": pop_ms,
         "step_ratio": pop_ms / solo_ms,
         "solo_compile_s": [r["compile_time_s"] for r in solo.results],
         "population_compile_s": pop.results[0]["compile_time_s"]}
  device = describe_device()
  lines = [
      f"# Population of {m} vs {m} solo runs on {device}", "",
      f"{exp.name} ({args.only}), seeds {args.seeds}, {args.steps} steps a "
      f"run, median of {args.rounds} alternating rounds (wall s: solo "
      f"{', '.join(f'{w:.1f}' for w in solo_walls)}; population "
      f"{', '.join(f'{w:.1f}' for w in pop_walls)}).", "",
      "| | wall s | / one solo run |", "|---|---|---|",
      f"| {m} solo runs, one after another | {solo_total:.1f} | "
      f"{solo_total / one:.2f}x |",
      f"| one solo run (mean) | {one:.1f} | 1.00x |",
      f"| population of {m} | {pop_wall:.1f} | {pop_wall / one:.2f}x |", "",
      f"Steady-state train step (interleaved): solo {solo_ms:.2f} ms, "
      f"population of {m} {pop_ms:.2f} ms ({pop_ms / solo_ms:.2f}x).  "
      f"Compilation: solo runs "
      f"{', '.join(f'{c:.1f}' for c in row['solo_compile_s'])} s each, "
      f"the population {row['population_compile_s']:.1f} s once.", "",
      f"Largest relative difference of a final metric, population member vs "
      f"solo run: {max(checks):.1e}.", "",
      "Target (issue 15): a population of 3 seeds costs at most 1.5x one "
      "run's wall time."]
  write_outputs("population", {"device": device, "row": row}, args.json,
                "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
