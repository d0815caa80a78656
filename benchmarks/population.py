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

``--cores 1,2`` measures only those steady-state step times, each core count
in its own subprocess pinned to that many cores (`os.sched_setaffinity`,
before JAX starts, so XLA sizes its thread pools to them).  It answers
where the population's gain can come from: if the second core already
speeds one run up by s, the M members' work spread over k cores cannot
take less than M * (1-core step) / k, which is M * s / k times the solo
step on k cores (a floor of CPU work, not a measurement of waste).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import describe_device, time_interleaved, write_outputs
from mtrec_jax import experiment as experiment_lib
from mtrec_jax import sweep
from mtrec_jax.data.pipeline import train_batches
from mtrec_jax.population_axis import POPULATION_AXIS
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
  pop = jax.jit(jax.vmap(population.make_member_step(c0, ()),
                         axis_name=POPULATION_AXIS))  # as the trainer
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


def _pinned_step_times(cores: int, args) -> dict:
  """`step_times` in a subprocess pinned to the first `cores` cores."""
  code = ("import json, os, sys; os.sched_setaffinity(0, range({k}));"
          "from benchmarks import population as p;"
          "print(json.dumps(p._step_only(sys.argv[1:])))").format(k=cores)
  out = subprocess.run(
      [sys.executable, "-c", code, "--experiment", args.experiment,
       "--only", args.only, "--seeds", args.seeds],
      check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _step_only(argv) -> dict:
  p = argparse.ArgumentParser()
  p.add_argument("--experiment"), p.add_argument("--only")
  p.add_argument("--seeds")
  args = p.parse_args(argv)
  runs = _selection(args, steps=None).runs(
      experiment_lib.get_experiment(args.experiment))
  solo_ms, pop_ms = step_times(runs, rounds=5, iters=10)
  return {"cores": len(os.sched_getaffinity(0)), "solo_step_ms": solo_ms,
          "population_step_ms": pop_ms, "members": len(runs)}


def _selection(args, steps: int | None) -> sweep.Selection:
  axis, _, value = args.only.partition("=")
  overrides = {"log.tensorboard": False}
  if steps is not None:
    overrides["train.num_steps"] = steps
  return sweep.Selection(
      overrides=overrides, seeds=tuple(int(s) for s in args.seeds.split(",")),
      only={axis: [value]} if value else {})


def cores_main(args) -> None:
  """`--cores`: the solo and population steps on each core count."""
  rows = [_pinned_step_times(int(k), args) for k in args.cores.split(",")]
  m = rows[0]["members"]
  device = describe_device()
  lines = [f"# Population of {m}: step time by core count on {device}", "",
           f"{args.experiment} ({args.only}), seeds {args.seeds}: the "
           "steady-state train step of one run and of the population, "
           "timed interleaved in a process pinned to that many cores.", "",
           "| cores | solo step ms | population step ms | population / "
           "solo | floor / solo |", "|---|---|---|---|---|"]
  one = next((r for r in rows if r["cores"] == 1), None)
  for r in rows:
    r["floor_ratio"] = (None if one is None else
                        m * one["solo_step_ms"] / r["cores"]
                        / r["solo_step_ms"])
    floor = "-" if one is None else f"{r['floor_ratio']:.2f}x"
    lines.append(f"| {r['cores']} | {r['solo_step_ms']:.1f} | "
                 f"{r['population_step_ms']:.1f} | "
                 f"{r['population_step_ms'] / r['solo_step_ms']:.2f}x | "
                 f"{floor} |")
  lines += ["", "floor / solo: M x (the 1-core solo step) / cores, over the "
            "solo step on that many cores: the least the population's step "
            "can cost, relative to one run's, if it kept every core busy "
            "with the members' work and did nothing more."]
  write_outputs("population_cores", {"device": device, "rows": rows,
                                     "experiment": args.experiment,
                                     "only": args.only, "seeds": args.seeds},
                args.json, "\n".join(lines) + "\n")


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
  p.add_argument("--cores", default=None,
                 help="e.g. 1,2: only the step times, pinned to each core "
                      "count (population_cores.json)")
  args = p.parse_args(argv)
  if args.cores:
    return cores_main(args)
  exp = experiment_lib.get_experiment(args.experiment)
  seeds = tuple(int(s) for s in args.seeds.split(","))
  selection = _selection(args, args.steps)
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
