"""Train-step throughput per model x strategy: time, examples/s, compile, memory.

    python -m benchmarks.throughput [--quick] [--batch-size 256] [--json OUT]
    python -m benchmarks.throughput --models encoder --update  # one model again

Why: the strategy benchmark uses one MLP; this one shows what a train step
costs on the project's real architectures, so a slowdown in a model (not
only in a strategy) is seen.  Models (`build`): shared_bottom, mmoe and ple
with the sizes of `experiments/census_mtl.py` on a census-like synthetic
batch (32 categorical features, vocabularies of 3 to 52 ids, 4-dim
embeddings, 7 numerics; two binary tasks), and `encoder`: the Transformer
of `prefix_config` in `experiments/ml100k_mtl.py` (2 pre-LN layers, 32
units, 2 heads, 'last' pooling, dropout on; 64-unit bottom, 32-unit
towers) on a synthetic batch of 50-item histories over 1,683 items with
three tasks (next item: softmax over all items; rating: regression; like:
binary).  Strategies: mean (loss
kind, one backward pass), pcgrad in "params" mode (K shared-parameter
gradients; the Jacobian engine the trainer picks: unrolled on CPU, vmap
elsewhere) and mgda in "rep" mode.

Measured per row: `compile_ms`, the time of ``jit(step).lower(...)`` plus
``.compile()`` (tracing and XLA compilation; the compiled executable is the
one timed); `step_ms`, the median step time, all rows of one model timed in
interleaved rounds (`common.time_interleaved`), with `other_load`, the
cores other processes kept busy meanwhile (`OtherLoad`; ~0 on a quiet
machine); `examples_per_s` = batch / step; `flops`, XLA's cost-analysis count for one step; `xla_step_mb`, the
compiled step's arguments + outputs + temporaries - aliased buffers
(`memory_analysis`); and the peak memory while running the step a few times:
the device's ``peak_bytes_in_use`` where the device reports memory stats
(accelerators; cumulative over the process), else the process's peak
resident set (VmHWM, reset before each row through /proc/self/clear_refs
where the kernel allows, so it is that row's peak including the Python
process, every compiled program and every live buffer), with `before_mb`,
what was in use just before those steps (the difference is what running the
step added).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from benchmarks.common import (RESULTS_DIR, describe_device, time_interleaved,
                               write_outputs)
from mtrec_jax import weighting
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.features import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec
from mtrec_jax.train import parallel
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.step import make_train_step

MODELS = ("shared_bottom", "mmoe", "ple", "encoder")
STRATEGY_MODES = (("mean", "loss"), ("pcgrad", "params"), ("mgda", "rep"))
NUM_ITEMS = 1683  # MovieLens-100K's item ids 1..1682 plus padding
SEQ_LEN = 50


def census_like(batch_size: int, seed: int = 0, num_categorical: int = 32):
  """(features, tasks, batch): Census-Income's shape, random values."""
  rng = np.random.default_rng(seed)
  vocab = rng.integers(3, 53, size=num_categorical)
  features = tuple(FeatureSpec(f"c{i}", "categorical", vocab_size=int(v),
                               embed_dim=4) for i, v in enumerate(vocab))
  features += (FeatureSpec("numeric", "numeric", dim=7),)
  batch = {f"c{i}": rng.integers(1, v, size=batch_size).astype(np.int32)
           for i, v in enumerate(vocab)}
  batch["numeric"] = rng.normal(size=(batch_size, 7)).astype(np.float32)
  tasks = tuple(TaskSpec(t, t, "binary") for t in ("income", "marital"))
  for t in tasks:
    batch[t.label] = rng.integers(0, 2, size=batch_size).astype(np.float32)
  return features, tasks, batch


def sequence_like(batch_size: int, seed: int = 0, num_items: int = NUM_ITEMS,
                  seq_len: int = SEQ_LEN):
  """(features, tasks, batch): left-padded item histories of random length."""
  rng = np.random.default_rng(seed)
  features = (FeatureSpec("history", "sequence", vocab_size=num_items,
                          embed_dim=32, max_len=seq_len),)
  lengths = rng.integers(1, seq_len + 1, size=batch_size)
  ids = rng.integers(1, num_items, size=(batch_size, seq_len)).astype(np.int32)
  ids[np.arange(seq_len)[None, :] < (seq_len - lengths)[:, None]] = 0
  tasks = (TaskSpec("next_item", "next_item", "multiclass",
                    num_classes=num_items),
           TaskSpec("rating", "rating", "regression"),
           TaskSpec("like", "like", "binary"))
  batch = {"history": ids,
           "next_item": rng.integers(1, num_items, size=batch_size
                                     ).astype(np.int32),
           "rating": rng.integers(1, 6, size=batch_size).astype(np.float32),
           "like": rng.integers(0, 2, size=batch_size).astype(np.float32)}
  return features, tasks, batch


def model_config(name: str) -> ml_collections.ConfigDict:
  cfg = default_model_config()
  if name == "encoder":
    cfg.name = "shared_bottom"
    cfg.bottom_hidden = (64,)
    cfg.tower_hidden = (32,)
    cfg.dropout = 0.1
    cfg.encoder.num_layers = 2
    cfg.encoder.num_heads = 2
    cfg.encoder.hidden_dim = 32
    cfg.encoder.mlp_dim = 64
    cfg.encoder.pooling = "last"
    cfg.encoder.dropout = 0.2
    cfg.encoder.attention_dropout = 0.2
    return cfg
  cfg.name = name
  cfg.bottom_hidden = (64,)
  cfg.num_experts = 8
  cfg.expert_hidden = (16,)
  cfg.num_levels = 2
  cfg.num_shared_experts = 2
  cfg.num_task_experts = 2
  cfg.tower_hidden = (8,)
  return cfg


def build(name: str, batch_size: int, cfg: ml_collections.ConfigDict | None
          = None, data: dict | None = None):
  """(model, tasks, device batch, params) of benchmark model `name`; `cfg`
  replaces the model config and `data` holds keyword arguments of the batch
  maker (the smoke test shrinks both)."""
  if name not in MODELS:
    raise ValueError(f"model {name!r} is not one of {MODELS}")
  make = sequence_like if name == "encoder" else census_like
  features, tasks, batch = make(batch_size, **(data or {}))
  cfg = cfg if cfg is not None else model_config(name)
  model = build_model(cfg, features, tuple((t.name, t.out_dim) for t in tasks))
  batch = jax.device_put(batch)
  params = model.init({"params": jax.random.PRNGKey(0),
                       "dropout": jax.random.PRNGKey(1)}, batch)["params"]
  return model, tasks, batch, params


def default_engine() -> str:
  """The Jacobian engine `train.jacobian_engine='auto'` picks."""
  return parallel.jacobian_engine("auto")


def compiled_step(model, tasks, params, batch, strategy_name: str, mode: str,
                  optimizer=None) -> tuple[Any, Any, dict]:
  """AOT-compiles one train step; returns (executable, state, facts) with
  facts {compile_ms, flops, xla_step_mb}."""
  optimizer = optimizer or optax.adam(1e-3)
  strategy = weighting.build(strategy_name)
  step = jax.jit(make_train_step(model, tasks, strategy, optimizer,
                                 "" if mode == "loss" else mode,
                                 jacobian=default_engine()))
  state = state_lib.create(params, optimizer, strategy, len(tasks),
                           jax.random.PRNGKey(2))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_ms = (time.perf_counter() - t0) * 1e3
  return compiled, state, {"compile_ms": compile_ms,
                           "flops": step_flops(compiled),
                           "xla_step_mb": step_bytes(compiled) / 2 ** 20}


def step_flops(compiled) -> float:
  """XLA's FLOP count of one call (cost_analysis is a dict in jax 0.10;
  older versions return a list with one dict per program)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    return float(sum(c.get("flops", 0.0) for c in cost))
  return float(cost.get("flops", 0.0)) if cost else 0.0


def step_bytes(compiled) -> float:
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  return float(m.argument_size_in_bytes + m.output_size_in_bytes +
               m.temp_size_in_bytes - m.alias_size_in_bytes)


def _reset_peak_rss() -> bool:
  try:
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    return True
  except OSError:
    return False


def _status_mb(field: str) -> float:
  """A /proc/self/status memory field (VmRSS, VmHWM) in MB; NaN elsewhere."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def peak_memory(fn, state, batch, steps: int = 3) -> tuple[float, float, str]:
  """(peak MB, MB in use before the steps, source) over `steps` steps."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    before = stats.get("bytes_in_use", 0) / 2 ** 20
  else:
    stats = None
    reset = _reset_peak_rss()
    before = _status_mb("VmRSS")
  for _ in range(steps):
    state = fn(state, batch)
  jax.block_until_ready(state)
  if stats is not None:
    stats = device.memory_stats()
    return (stats["peak_bytes_in_use"] / 2 ** 20, before,
            "device_peak_bytes_in_use")
  return (_status_mb("VmHWM"), before,
          "rss_peak" if reset else "rss_peak_process")


class OtherLoad:
  """Cores kept busy by other processes while the block ran (a quality flag:
  PyTorch's OpenMP steps slowed 30-60x when another process took a core,
  XLA's steps about 2x).  ``with OtherLoad() as load: ...; load.value``:
  busy CPU time from /proc/stat minus this process's own, over wall time;
  NaN where /proc/stat is missing."""

  @staticmethod
  def _busy_s() -> float:
    try:
      fields = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
      return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, fields[1:9])
    del idle, iowait
    return (user + nice + system + irq + softirq + steal) / os.sysconf(
        "SC_CLK_TCK")

  def __enter__(self) -> "OtherLoad":
    self.value = float("nan")
    t = os.times()
    self._start = (time.perf_counter(), self._busy_s(), t.user + t.system)
    return self

  def __exit__(self, *exc) -> None:
    t = os.times()
    wall0, busy0, own0 = self._start
    wall = time.perf_counter() - wall0
    other = (self._busy_s() - busy0) - (t.user + t.system - own0)
    self.value = max(other, 0.0) / wall if wall > 0 else float("nan")


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def with_dtype(name: str, cfg: ml_collections.ConfigDict | None,
               dtype: str) -> ml_collections.ConfigDict:
  """Model `name`'s config (or `cfg`) computing in `dtype` (parameters and
  optimizer state stay float32: `model.dtype` is the compute dtype)."""
  cfg = ml_collections.ConfigDict((cfg or model_config(name)).to_dict())
  cfg.dtype = dtype
  return cfg


def measure(models=MODELS, strategy_modes=STRATEGY_MODES, *,
            batch_size: int = 256, rounds: int = 5, iters: int = 5,
            configs: dict | None = None, data: dict | None = None,
            dtypes=("float32",)) -> list[dict]:
  """One row per model x compute dtype x strategy (see the module
  docstring); `configs` and `data` map a model name to `build`'s `cfg` and
  `data`."""
  rows = []
  for name, dtype in itertools.product(models, dtypes):
    model, tasks, batch, params = build(
        name, batch_size, with_dtype(name, (configs or {}).get(name), dtype),
        (data or {}).get(name))
    entries = []
    for strategy_name, mode in strategy_modes:
      compiled, state, facts = compiled_step(model, tasks, params, batch,
                                             strategy_name, mode)
      fn = lambda s, b, c=compiled: c(s, b)[0]
      peak, before, source = peak_memory(fn, state, batch)
      meta = {"model": name, "dtype": dtype, "strategy": strategy_name,
              "mode": mode,
              "engine": default_engine() if mode == "params" else "",
              "batch_size": batch_size, "num_tasks": len(tasks),
              "params": param_count(params), **facts, "peak_mb": peak,
              "before_mb": before, "memory_source": source}
      entries.append((meta, fn, state))
    with OtherLoad() as load:
      timed = time_interleaved([(fn, st) for _, fn, st in entries], batch,
                               rounds=rounds, iters=iters)
    for (meta, _, _), (ms, _) in zip(entries, timed):
      rows.append({**meta, "step_ms": ms, "other_load": load.value,
                   "examples_per_s": batch_size / (ms / 1e3),
                   "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
      print(rows[-1], flush=True)
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true",
                 help="2 rounds of 2 steps (a smoke run)")
  p.add_argument("--json", help="output JSON path (default "
                 "benchmarks/results/throughput_<platform>.json)")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--dtypes", default="float32",
                 help="comma-separated compute dtypes (float32, bfloat16)")
  p.add_argument("--update", action="store_true",
                 help="keep the output file's rows of the models not "
                 "measured now (re-measure some models only)")
  args = p.parse_args(argv)
  rounds, iters = (2, 2) if args.quick else (args.rounds, args.iters)
  models = args.models.split(",")
  rows = measure(models, batch_size=args.batch_size, rounds=rounds,
                 iters=iters, dtypes=tuple(args.dtypes.split(",")))
  name = f"throughput_{jax.devices()[0].platform}"
  path = pathlib.Path(args.json) if args.json else RESULTS_DIR / f"{name}.json"
  if args.update and path.exists():
    kept = [r for r in json.loads(path.read_text())["rows"]
            if r["model"] not in models]
    order = {m: i for i, m in enumerate(MODELS)}
    rows = sorted(kept + rows, key=lambda r: order.get(r["model"], 99))
  device = describe_device()
  write_outputs(name, {"device": device, "batch_size": args.batch_size,
                       "rounds": rounds, "iters": iters, "rows": rows},
                str(path), summary(rows, device))


def summary(rows, device: str) -> str:
  lines = [f"# Train-step throughput on {device}", "",
           "| model | dtype | strategy | mode | params | step ms | examples/s | "
           "compile ms | GFLOP/step | XLA step MB | peak MB | +MB | memory |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r.get('dtype', 'float32')} | {r['strategy']} | "
        f"{r['mode']}"
        f"{' (' + r['engine'] + ')' if r['engine'] else ''} | "
        f"{r['params']:,} | {r['step_ms']:.2f} | {r['examples_per_s']:,.0f} | "
        f"{r['compile_ms']:,.0f} | {r['flops'] / 1e9:.3f} | "
        f"{r['xla_step_mb']:.1f} | {r['peak_mb']:,.0f} | "
        f"{r['peak_mb'] - r['before_mb']:,.0f} | {r['memory_source']} |")
  if rows:
    load = max(r.get("other_load", float("nan")) for r in rows)
    lines += ["", f"Batch {rows[0]['batch_size']}; step time: median of "
              "interleaved rounds per model (other processes kept at most "
              f"{load:.2f} cores busy meanwhile); compile: lower + compile of the "
              "jitted step; XLA step MB: the compiled step's arguments + outputs + "
              "temporaries; peak MB: see `memory`, +MB: peak minus what was "
              "in use just before the row's first steps."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
