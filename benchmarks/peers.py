"""JAX vs LibMTL-style PyTorch: train-step time per strategy, one process.

    pip install -e '.[bench]'          # the CPU torch wheel (and scipy)
    python -m benchmarks.peers [--quick] [--k 4] [--batch-size 256] [--json OUT]

Why: the claim that the fused JAX step beats the usual PyTorch recipe has to
be measured on the same model, batch and machine, in the same run.  Model:
`benchmarks.strategies.setup` (shared bottom 2 x 512, 64-unit towers, K
regression tasks, batch 256, Adam 1e-3); the PyTorch side
(`benchmarks.torch_mtl`) is the same architecture with K sequential
``loss_k.backward(retain_graph=True)`` calls, flat shared gradients and a
host-side combination (LibMTL's parameter-gradient mode), and also LibMTL's
representation mode (``rep_grad=True``; LibMTL itself offers no PCGrad or
CAGrad there, the version here does).

Measured: the median time of one full train step (forward, the per-task
gradients, the strategy, the Adam update), every JAX and PyTorch entry timed
together in interleaved rounds (`time_rounds`).  JAX rows: ``mean`` (one
backward pass, as LibMTL's equal weighting) and, per gradient strategy,
"params" mode with the unrolled Jacobian (our best CPU configuration) and
"rep" mode; each is compared with the PyTorch step of the same mode (the
apples-to-apples ratio; params is the headline one) and with PyTorch's
params mode (LibMTL's default).  ratio = torch_ms / jax_ms (> 1: JAX
faster).  Hyper-parameters match on both sides: MGDA without normalisation,
PCGrad random order, GradNorm alpha 1.5 (weights by Adam lr 0.025), CAGrad
c = 0.5 with rescale 1 + c^2.  Torch uses as many intra-op threads as the
cores this process may run on (XLA:CPU sizes its pool the same way); both
numbers are written to the output.

Also written, to tell compute-bound from overhead-bound: XLA's FLOP count
of each JAX step and both sides' GFLOP/s against a float32 matmul peak
measured in the same run (`roofline.matmul_peak`); and ``agreement``, the
relative difference between the PyTorch and JAX combined update for MGDA,
PCGrad (fixed order) and CAGrad on one random conflicting [K, P] Jacobian,
which shows the two sides compute the same method (MGDA differs by the
tolerance of Frank-Wolfe, which stops when a step moves the weights by less
than 1e-5).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import describe_device, time_interleaved, write_outputs
from benchmarks.roofline import matmul_peak
from benchmarks.throughput import OtherLoad, step_flops

STRATEGIES = ("mean", "mgda", "pcgrad", "gradnorm", "cagrad")
CAGRAD_C = 0.5


def import_torch():
  """torch, or exit with how to install it (torch is not a CI dependency)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("benchmarks.peers needs PyTorch (CPU build): "
             "pip install -e '.[bench]'")
  return torch


def time_rounds(entries, batch, *, rounds: int, iters: int
                ) -> list[tuple[float, float]]:
  """`common.time_interleaved` with one untimed call at the start of each
  entry's turn: in one process, PyTorch's OpenMP workers keep spinning for a
  while after a PyTorch step, and so do XLA's after a JAX step, which slowed
  the first call after a switch (JAX's mean step measured 15 ms instead of
  9 ms with 2 calls a turn)."""
  return time_interleaved(entries, batch, rounds=rounds, iters=iters,
                          settle=1)


def jax_hparams(name: str) -> dict:
  return {"c": CAGRAD_C} if name == "cagrad" else {}


def jax_entries(k: int, batch_size: int, names):
  """(meta, fn, state) per JAX row, and the batch (numpy copy included)."""
  from benchmarks.strategies import setup  # pylint: disable=import-outside-toplevel
  from mtrec_jax import weighting  # pylint: disable=import-outside-toplevel
  from mtrec_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from mtrec_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
  model, tasks, batch, params = setup(k, batch_size)
  optimizer = optax.adam(1e-3)
  out = []
  for name in names:
    strategy = weighting.build(name, **jax_hparams(name))
    modes = ("loss",) if strategy.kind == "loss" else ("params", "rep")
    for mode in modes:
      step = jax.jit(make_train_step(
          model, tasks, strategy, optimizer, "" if mode == "loss" else mode,
          jacobian="unrolled"))
      state = state_lib.create(params, optimizer, strategy, k,
                               jax.random.PRNGKey(1))
      compiled = step.lower(state, batch).compile()
      out.append(({"side": "jax", "strategy": name, "mode": mode,
                   "flops": step_flops(compiled)},
                  lambda s, b, c=compiled: c(s, b)[0], state))
  return out, batch


def torch_entries(batch, k: int, names, warmup: int):
  """(meta, fn, state) per PyTorch row (mean: one backward pass; the
  gradient methods in LibMTL's "params" and "rep" modes); each step warmed
  up `warmup` times."""
  from benchmarks import torch_mtl  # pylint: disable=import-outside-toplevel
  x = np.asarray(batch["x"])
  ys = [np.asarray(batch[f"y{i}"]) for i in range(k)]
  out = []
  for name in names:
    for mode in (("loss",) if name == "mean" else ("params", "rep")):
      step = torch_mtl.LibMTLStep(name, x, ys, cagrad_c=CAGRAD_C,
                                  mode="params" if mode == "loss" else mode)
      for _ in range(warmup):
        step.step()
      out.append(({"side": "torch", "strategy": name, "mode": mode},
                  lambda s, b: s.step(), step))
  return out


def agreement(k: int = 4, p: int = 4096, seed: int = 0) -> dict:
  """max |u_torch - u_jax| / |u_jax| of the combined update on one random
  Jacobian whose rows conflict (for the deterministic methods)."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_mtl  # pylint: disable=import-outside-toplevel
  from mtrec_jax import weighting  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(1, p))
  jac = (0.3 * base + rng.normal(size=(k, p))).astype(np.float32)
  jac[0] -= 1.5 * jac[1]  # one strongly conflicting pair
  gram = jac.astype(np.float64) @ jac.T.astype(np.float64)
  t_jac = torch.from_numpy(jac)
  torch_updates = {
      "mgda": torch_mtl.frank_wolfe_min_norm(gram) @ jac,
      "pcgrad": torch_mtl.pcgrad_update(
          t_jac, [list(range(k))] * k).numpy(),
      "cagrad": torch_mtl.cagrad_weights(gram, CAGRAD_C,
                                         1.0 + CAGRAD_C ** 2) @ jac,
  }
  out = {}
  for name, u in torch_updates.items():
    ref = np.asarray(weighting.aggregate(name, jnp.asarray(jac),
                                         **jax_hparams(name)))
    out[name] = float(np.linalg.norm(u - ref) / np.linalg.norm(ref))
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true",
                 help="2 rounds of 2 steps (a smoke run)")
  p.add_argument("--json", help="output JSON path "
                 "(default benchmarks/results/peers_cpu.json)")
  p.add_argument("--k", type=int, default=4, help="number of tasks")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--strategies", default=",".join(STRATEGIES))
  args = p.parse_args(argv)
  torch = import_torch()
  names = args.strategies.split(",")
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  rounds, iters = (2, 2) if args.quick else (args.rounds, args.iters)
  jax_rows, batch = jax_entries(args.k, args.batch_size, names)
  torch_rows = torch_entries(batch, args.k, names, warmup=3)
  entries = jax_rows + torch_rows
  with OtherLoad() as load:
    timed = time_rounds([(fn, st) for _, fn, st in entries], batch,
                        rounds=rounds, iters=iters)
  measured = [{**meta, "step_ms": ms, "first_ms": first}
              for (meta, _, _), (ms, first) in zip(entries, timed)]
  peak = matmul_peak((1024,) if args.quick else (2048, 4096),
                     iters=2 if args.quick else 5)
  for m in measured:
    print(m, flush=True)
  rows = ratio_rows(measured, names)
  device = describe_device()
  threads = {"cores_available": cores, "torch_threads": torch.get_num_threads(),
             "torch_interop_threads": torch.get_num_interop_threads(),
             "xla_cpu_threads": cores}
  payload = {"device": device, "k": args.k, "batch_size": args.batch_size,
             "rounds": rounds, "iters": iters, "threads": threads,
             "torch_version": torch.__version__, "cpu": platform.processor()
             or platform.machine(), "agreement": agreement(args.k),
             "other_load": load.value, "matmul_peak": peak,
             "peak_gflops": max(r["gflops"] for r in peak),
             "rows": rows, "measured": measured}
  name = "peers_cpu" if jax.devices()[0].platform == "cpu" else "peers"
  write_outputs(name, payload, args.json, summary(payload))


def ratio_rows(measured: list[dict], names) -> list[dict]:
  """{strategy, jax_ms, torch_ms, ratio, jax_mode} per JAX row, against the
  PyTorch step of the same gradient mode (also `torch_params_ms`: LibMTL's
  default mode)."""
  torch_ms = {(m["strategy"], m["mode"]): m["step_ms"] for m in measured
              if m["side"] == "torch"}
  rows = []
  for m in measured:
    key = (m["strategy"], m["mode"])
    if m["side"] != "jax" or key not in torch_ms:
      continue
    t = torch_ms[key]
    default = torch_ms.get((m["strategy"], "params"), t)
    rows.append({"strategy": m["strategy"], "jax_ms": m["step_ms"],
                 "torch_ms": t, "ratio": t / m["step_ms"],
                 "jax_mode": m["mode"], "torch_params_ms": default,
                 "ratio_vs_torch_params": default / m["step_ms"],
                 "jax_flops": m["flops"],
                 "jax_gflops_per_s": m["flops"] / m["step_ms"] / 1e6,
                 "torch_gflops_per_s": m["flops"] / t / 1e6})
  order = {n: i for i, n in enumerate(names)}
  return sorted(rows, key=lambda r: (order[r["strategy"]],
                                     r["jax_mode"] == "rep"))


def summary(payload: dict) -> str:
  """Markdown: the ratio table and the apples-to-apples verdict."""
  rows, th = payload["rows"], payload["threads"]
  lines = [f"# JAX vs LibMTL-style PyTorch step time on {payload['device']}",
           "",
           f"K={payload['k']} regression tasks, batch {payload['batch_size']}, "
           f"shared bottom 2x512, 64-unit towers, Adam; median of "
           f"{payload['rounds']} interleaved rounds x {payload['iters']} "
           f"steps; torch {payload['torch_version']} with "
           f"{th['torch_threads']} intra-op threads, XLA:CPU on "
           f"{th['cores_available']} cores; other processes kept "
           f"{payload['other_load']:.2f} cores busy on average meanwhile.",
           "torch_ms is the PyTorch step in the same gradient mode; the last "
           "column compares with LibMTL's default (params) mode.", "",
           "GFLOP/s: XLA's FLOP count of the JAX step over each side's time "
           "(the PyTorch step of the same mode does the same matmuls); "
           f"measured float32 matmul peak: {payload['peak_gflops']:.0f} "
           "GFLOP/s.", "",
           "| strategy | jax_mode | jax_ms | torch_ms | ratio (torch/jax) | "
           "ratio vs torch params | GFLOP/step | JAX GFLOP/s | "
           "torch GFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['strategy']} | {r['jax_mode']} | {r['jax_ms']:.2f} | "
                 f"{r['torch_ms']:.2f} | {r['ratio']:.2f} | "
                 f"{r['ratio_vs_torch_params']:.2f} | "
                 f"{r['jax_flops'] / 1e9:.2f} | {r['jax_gflops_per_s']:.0f} | "
                 f"{r['torch_gflops_per_s']:.0f} |")
  same = [r for r in rows if r["jax_mode"] in ("loss", "params")]
  if same:
    worst = min(same, key=lambda r: r["ratio"])
    lines += ["", "Apples to apples (mean: one backward pass on both sides; "
              "gradient strategies: the K shared-parameter gradients, JAX "
              f"params mode): smallest ratio {worst['ratio']:.2f} "
              f"({worst['strategy']}); every JAX step at least 2x faster: "
              f"{'yes' if worst['ratio'] >= 2 else 'no'}."]
  rep = [r for r in rows if r["jax_mode"] == "rep"]
  if rep:
    lo = min(rep, key=lambda r: r["ratio"])
    lines.append(f"Rep mode against PyTorch rep mode: smallest ratio "
                 f"{lo['ratio']:.2f} ({lo['strategy']}).")
  agree = payload.get("agreement", {})
  if agree:
    lines += ["", "Same method on both sides (relative difference of the "
              "combined update on one random conflicting Jacobian): " +
              ", ".join(f"{n} {v:.1e}" for n, v in agree.items()) + "."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
