"""Fraction of the hardware's measured matmul peak that a train step reaches.

    python -m benchmarks.roofline [--quick] [--batch-sizes 256,1024] [--json OUT]

Why: a step time alone does not say whether a model is slow because it does
much work or because it uses the device badly.  Per model of
`benchmarks.throughput` (strategy `mean` by default), the FLOPs of one
compiled train step as XLA's cost analysis counts them (matmuls as 2 m n k,
plus the elementwise work it counts) divided by the measured median step
time give the achieved GFLOP/s; the peak is the best rate of a few large
float32 matmuls (``a @ b``, n x n by n x n for n in `--matmul-sizes`, 2 n^3
FLOPs) timed on the same device by the same rule (`common.time_step`: one
untimed first call, warm-up calls, the median of timed calls), before and
after the models.  fraction =
achieved / peak, the share of the attainable compute rate the step reaches.
Small models are bound by per-op overhead and memory traffic, not compute,
so their fractions are low by nature; the number to watch is the
Transformer encoder's at batch >= 256.

Caveats: XLA counts the work of a loop body once (the PCGrad and solver
loops are tiny next to the model), and the peak is the matmul rate this
build of XLA reaches, not the vendor's datasheet figure.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import (describe_device, time_interleaved, time_step,
                               write_outputs)
from benchmarks.throughput import (MODELS, OtherLoad, build, compiled_step,
                                   with_dtype)


def matmul_peak(sizes=(2048, 4096), iters: int = 5,
                dtype: str = "float32") -> list[dict]:
  """GFLOP/s of an n x n matmul in `dtype` for each n (median of
  `iters`)."""
  rows = []
  mm = jax.jit(lambda a, b: (a @ b, b))  # (state, batch) -> state, as time_step
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    step = lambda state, batch: mm(batch, state[1])
    with OtherLoad() as load:
      ms, _ = time_step(step, (a, b), a, warmup=1, iters=iters)
    rows.append({"n": n, "dtype": dtype, "ms": ms, "gflops": 2 * n ** 3 / (ms / 1e3) / 1e9,
                 "other_load": load.value})
    print(rows[-1], flush=True)
  return rows


def measure(models=MODELS, batch_sizes=(256,), strategies=("mean",), *,
            rounds: int = 5, iters: int = 3, configs: dict | None = None,
            data: dict | None = None, dtype: str = "float32") -> list[dict]:
  """Per model x batch size x strategy: flops, step ms, achieved GFLOP/s
  (`configs`, `data`: as `throughput.measure`; `dtype`: the compute
  dtype)."""
  rows = []
  for name in models:
    for batch_size in batch_sizes:
      model, tasks, batch, params = build(
          name, batch_size, with_dtype(name, (configs or {}).get(name), dtype),
          (data or {}).get(name))
      entries = []
      for strategy in strategies:
        mode = {"mean": "loss", "mgda": "rep"}.get(strategy, "params")
        compiled, state, facts = compiled_step(model, tasks, params, batch,
                                               strategy, mode)
        entries.append(({"model": name, "dtype": dtype,
                         "batch_size": batch_size,
                         "strategy": strategy, "mode": mode,
                         "flops": facts["flops"]},
                        lambda s, b, c=compiled: c(s, b)[0], state))
      with OtherLoad() as load:
        timed = time_interleaved([(fn, st) for _, fn, st in entries], batch,
                                 rounds=rounds, iters=iters)
      for (meta, _, _), (ms, _) in zip(entries, timed):
        rows.append({**meta, "step_ms": ms, "other_load": load.value,
                     "gflops": meta["flops"] / (ms / 1e3) / 1e9})
        print(rows[-1], flush=True)
  return rows


def with_fractions(rows: list[dict], peak_gflops: float) -> list[dict]:
  return [{**r, "peak_gflops": peak_gflops,
           "fraction": r["gflops"] / peak_gflops} for r in rows]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true",
                 help="matmuls of 1024 and 2048, 2 rounds of 2 steps")
  p.add_argument("--json", help="output JSON path (default "
                 "benchmarks/results/roofline_<platform>.json)")
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--batch-sizes", default="256")
  p.add_argument("--strategies", default="mean")
  p.add_argument("--matmul-sizes", default="2048,4096")
  p.add_argument("--dtype", default="float32",
                 help="compute dtype of the models and of the peak matmuls "
                 "(float32 or bfloat16)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--iters", type=int, default=3)
  args = p.parse_args(argv)
  sizes = ((1024, 2048) if args.quick
           else tuple(int(n) for n in args.matmul_sizes.split(",")))
  rounds, iters = (2, 2) if args.quick else (args.rounds, args.iters)
  peak_iters = 3 if args.quick else 5
  # The peak before and after the models, the best counting: one
  # measurement of it varied by 20% between runs (clock, other tenants).
  peak_rows = [{**r, "when": "before"}
               for r in matmul_peak(sizes, peak_iters, args.dtype)]
  rows = measure(args.models.split(","),
                 tuple(int(b) for b in args.batch_sizes.split(",")),
                 tuple(args.strategies.split(",")), rounds=rounds,
                 iters=iters, dtype=args.dtype)
  peak_rows += [{**r, "when": "after"}
                for r in matmul_peak(sizes, peak_iters, args.dtype)]
  peak = max(r["gflops"] for r in peak_rows)
  rows = with_fractions(rows, peak)
  device = describe_device()
  suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
  write_outputs(f"roofline_{jax.devices()[0].platform}{suffix}",
                {"device": device, "rounds": rounds, "iters": iters,
                 "matmul": peak_rows, "peak_gflops": peak, "rows": rows},
                args.json, summary(rows, peak_rows, device))


def summary(rows, peak_rows, device: str) -> str:
  peak = max(r["gflops"] for r in peak_rows)
  dtype = peak_rows[0].get("dtype", "float32") if peak_rows else "float32"
  lines = [f"# Roofline: achieved / matmul-peak FLOP rate on {device} "
           f"({dtype})", "",
           "Peak: " + ", ".join(f"{r['n']}^3 matmul {r['gflops']:.1f} GFLOP/s"
                                f" ({r['ms']:.1f} ms"
                                f"{', ' + r['when'] if 'when' in r else ''})"
                                for r in peak_rows) +
           f"; best {peak:.1f} GFLOP/s.", "",
           "| model | batch | strategy | GFLOP/step | step ms | GFLOP/s | "
           "peak GFLOP/s | fraction |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['batch_size']} | {r['strategy']} | "
                 f"{r['flops'] / 1e9:.3f} | {r['step_ms']:.2f} | "
                 f"{r['gflops']:.1f} | {r['peak_gflops']:.1f} | "
                 f"{r['fraction']:.1%} |")
  load = max([r.get("other_load", float("nan")) for r in rows + peak_rows]
             or [float("nan")])
  lines += ["", f"Other processes kept at most {load:.2f} cores busy while "
            "any row was timed."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
