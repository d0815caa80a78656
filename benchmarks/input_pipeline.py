"""Input pipeline vs train step: is the data path ever the bottleneck?

    MTREC_DATA_DIR=../shared/data python -m benchmarks.input_pipeline [--json OUT]

For Census-Income (`census-mtl`, MMoE) and MovieLens-100K (`ml100k-mtl`, all
four tasks), measures:
  * the one-time load of the prepared ArrayRecord copy (`load_s`; preparing
    it first if needed, which is timed separately as `prepare_s`);
  * the training pipeline alone: batches/s of `train_batches` (grain,
    one prefetch thread), consumed as fast as possible;
  * the jitted train step's consumption rate on the same batches
    (median step time, as in `benchmarks.common.time_step`).
The issue's target: pipeline examples/s >= 3x the step's, on 2 CPU cores.
Writes JSON {"device", "rows": [...]} and a Markdown table.
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time

import jax

from benchmarks.common import describe_device, time_step, write_outputs
from experiments.census_mtl import census_config
from experiments.ml100k_mtl import PREFIX_TASKS, prefix_config
from mtrec_jax.data.pipeline import train_batches
from mtrec_jax.train import loop
from mtrec_jax.train.step import make_train_step


def _configs():
  census = census_config()
  census.model.name = "mmoe"
  ml = prefix_config()
  ml.tasks = PREFIX_TASKS
  return {"census_income": census, "movielens_100k": ml}


def measure(name: str, config, batches: int, steps: int) -> dict:
  tfds_dir = tempfile.mkdtemp(prefix="mtrec_bench_tfds_")
  try:
    config.data.tfds_dir = tfds_dir
    t0 = time.perf_counter()
    loop.load_dataset(config)  # parse + write the ArrayRecord copy
    prepare_s = time.perf_counter() - t0
    loop.clear_dataset_cache()
    t0 = time.perf_counter()
    components = loop.Components(config)  # reads the prepared copy
    load_s = time.perf_counter() - t0
  finally:
    shutil.rmtree(tfds_dir, ignore_errors=True)
  train = components.dataset.split("train")
  bs = config.train.batch_size
  it = train_batches(train, bs, seed=0)
  next(it)
  t0 = time.perf_counter()
  for _ in itertools.islice(it, batches):
    pass
  pipe_s = (time.perf_counter() - t0) / batches

  state = loop.init_state(components)
  step = jax.jit(make_train_step(components.model, components.tasks,
                                 components.strategy, components.optimizer,
                                 config.strategy.mode))
  batch = next(train_batches(train, bs, seed=1))
  step_ms, compile_ms = time_step(lambda s, b: step(s, b)[0], state, batch,
                                  warmup=2, iters=steps)
  pipe_eps = bs / pipe_s
  step_eps = bs / (step_ms / 1e3)
  return {"dataset": name, "batch_size": bs,
          "train_rows": int(next(iter(train.values())).shape[0]),
          "prepare_s": prepare_s, "load_s": load_s,
          "pipeline_examples_per_s": pipe_eps,
          "step_ms": step_ms, "step_examples_per_s": step_eps,
          "compile_ms": compile_ms, "ratio": pipe_eps / step_eps}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batches", type=int, default=500,
                 help="pipeline batches to time")
  p.add_argument("--steps", type=int, default=20, help="train steps to time")
  p.add_argument("--json", default=None, help="output JSON path")
  args = p.parse_args(argv)
  rows = [measure(name, cfg, args.batches, args.steps)
          for name, cfg in _configs().items()]
  device = describe_device()
  lines = [f"# Input pipeline vs train step on {device}", "",
           "| dataset | batch | prepare s | load s | pipeline ex/s | "
           "step ms | step ex/s | pipeline / step |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['dataset']} | {r['batch_size']} | {r['prepare_s']:.2f} | "
        f"{r['load_s']:.2f} | {r['pipeline_examples_per_s']:,.0f} | "
        f"{r['step_ms']:.1f} | {r['step_examples_per_s']:,.0f} | "
        f"{r['ratio']:.1f}x |")
  lines += ["", "Target: pipeline >= 3x the step's examples/s."]
  write_outputs("input_pipeline", {"device": device, "rows": rows},
                args.json, "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
