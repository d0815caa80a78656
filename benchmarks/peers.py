"""JAX vs LibMTL-style PyTorch: train-step time per strategy, one process.

    pip install -e '.[bench]'          # the CPU torch wheel (and scipy)
    python -m benchmarks.peers [--model mlp|mmoe] [--quick] [--k 4]
                               [--batch-size 256] [--json OUT]

Why: the claim that the fused JAX step beats the usual PyTorch recipe has to
be measured on the same model, batch and machine, in the same run.  Two
models (`--model`, one per run; default mlp, whose results files predate
the option):

* ``mlp``: `benchmarks.strategies.setup` (shared bottom 2 x 512, 64-unit
  towers, K regression tasks, MSE).  Compute-bound at batch 256.
* ``mmoe``: the project's Census-sized MMoE exactly as
  `benchmarks.throughput.build('mmoe', batch)` builds it (32 categorical
  features with 4-dim embeddings, 7 numerics, 8 experts of 16 ReLU units,
  one softmax gate per task, towers of 8 ReLU units, 2 binary tasks with
  mean BCE on the logits).  Small and overhead-bound.  The PyTorch mirror
  (`torch_mtl.MMoENet`, built from the JAX model's own sizes by
  `torch_mmoe`) starts from the JAX model's initial weights
  (`load_jax_params`), so both sides compute the same losses and
  gradients (tests/benchmarks/test_peers.py checks it).  Rows of J: every
  parameter under the JAX ``params['shared']``, i.e. the embedding tables,
  the experts AND the gates, on both sides (LibMTL would count the gates
  as task-specific); rep mode: the gradients w.r.t. each task's
  gate-mixed expert output [K, B, 16], the JAX model's representation.
  The default JSON is benchmarks/results/peers_cpu_mmoe.json.

Both sides count the parameters at build time and must agree.  The
PyTorch side (`benchmarks.torch_mtl`) runs K sequential
``loss_k.backward(retain_graph=True)`` calls, flat shared gradients and a
host-side combination (LibMTL's parameter-gradient mode), and also LibMTL's
representation mode (``rep_grad=True``; LibMTL itself offers no PCGrad or
CAGrad there, the version here does).  Adam 1e-3 on both sides.

Measured: the median time of one full train step (forward, the per-task
gradients, the strategy, the Adam update), every JAX and PyTorch entry timed
together in interleaved rounds (`time_rounds`).  JAX rows: ``mean`` (one
backward pass, as LibMTL's equal weighting) and, per gradient strategy,
"params" mode with the unrolled Jacobian (our best CPU configuration) and
"rep" mode; each is compared with the PyTorch step of the same mode (the
apples-to-apples ratio; params is the headline one) and with PyTorch's
params mode (LibMTL's default).  ratio = torch_ms / jax_ms (> 1: JAX
faster).  Hyper-parameters match on both sides: MGDA without normalisation,
PCGrad random order, GradNorm alpha 1.5 (weights by Adam lr 0.025; the
norms of the whole rows of J: all shared parameters in params mode, the
task's representation in rep mode, the JAX strategy's convention), CAGrad
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
import dataclasses
import os
import platform
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import describe_device, time_interleaved, write_outputs
from benchmarks.roofline import matmul_peak
from benchmarks.throughput import OtherLoad, param_count, step_flops

STRATEGIES = ("mean", "mgda", "pcgrad", "gradnorm", "cagrad")
MODELS = ("mlp", "mmoe")
MLP_K = 4
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


@dataclasses.dataclass(frozen=True)
class Pair:
  """One benchmark model on both sides: the JAX model, tasks, device batch
  and initial params; the PyTorch step's inputs and labels (numpy, from the
  same batch) and `make_torch`, which returns a fresh PyTorch model for one
  step entry (None: `LibMTLStep` builds its own seeded `SharedBottomNet`)."""
  name: str
  description: str
  model: Any
  tasks: tuple
  batch: Any
  params: Any
  torch_inputs: Any
  torch_labels: list
  make_torch: Callable[[], Optional[Any]]
  jax_params: int
  torch_params: int


def check_param_counts(name: str, jax_count: int, torch_count: int) -> None:
  """Prints both counts; raises when they differ (the mirror is wrong)."""
  print(f"{name}: JAX parameters {jax_count:,}, PyTorch parameters "
        f"{torch_count:,}", flush=True)
  if jax_count != torch_count:
    raise ValueError(f"{name}: the PyTorch mirror has {torch_count:,} "
                     f"parameters, the JAX model {jax_count:,}")


def mlp_pair(k: int, batch_size: int) -> Pair:
  """The shared-bottom MLP of `benchmarks.strategies.setup`; PyTorch keeps
  its own initialisation (as the results files made before `--model`)."""
  from benchmarks import torch_mtl  # pylint: disable=import-outside-toplevel
  from benchmarks.strategies import INPUT_DIM, setup  # pylint: disable=import-outside-toplevel
  model, tasks, batch, params = setup(k, batch_size)
  torch_count = torch_mtl.num_parameters(
      torch_mtl.SharedBottomNet(INPUT_DIM, k))
  check_param_counts("mlp", param_count(params), torch_count)
  return Pair("mlp", f"shared bottom 2x512, 64-unit towers, K={k} "
              "regression tasks (MSE)", model, tasks, batch, params,
              np.asarray(batch["x"]),
              [np.asarray(batch[f"y{i}"]) for i in range(k)],
              lambda: None, param_count(params), torch_count)


def torch_mmoe(model):
  """A `torch_mtl.MMoENet` with the sizes of the JAX MMoE `model`;
  refuses configurations the mirror does not reproduce."""
  from benchmarks import torch_mtl  # pylint: disable=import-outside-toplevel
  conn = model.connection
  if type(conn).__name__ != "MMoE":
    raise ValueError(f"torch_mmoe mirrors the mmoe connection, got "
                     f"{type(conn).__name__}")
  if (model.dropout_rate or conn.dropout_rate or model.task_inputs
      or model.excluded or model.aux_tasks
      or np.dtype(model.dtype) != np.float32):
    raise ValueError("torch_mmoe mirrors float32 models without dropout, "
                     "task inputs, excluded features or auxiliary tasks")
  features = []
  for f in model.features:
    if f.kind == "sequence" or f.hash_buckets or f.share_with:
      raise ValueError(f"torch_mmoe: feature {f.name!r} ({f.kind}, hashed "
                       "or shared) is not mirrored")
    features.append((f.name, f.num_rows, f.embed_dim) if f.kind ==
                    "categorical" else (f.name, 0, f.dim))
  if any(dim != 1 for _, dim in model.task_dims):
    raise ValueError("torch_mmoe: every task must have one output")
  return torch_mtl.MMoENet(features, len(model.task_dims), conn.num_experts,
                           conn.expert_hidden, model.tower_hidden)


def jax_param_pairs(net, params, task_names) -> list:
  """(PyTorch parameter, the JAX array of `params` in its layout) for every
  parameter of the `MMoENet` `net`: flax Dense kernels [in, out] are
  transposed to Linear weights [out, in]; stacked kernels and tables keep
  their layout.  Also maps a gradient tree of the same structure."""
  from torch import nn  # pylint: disable=import-outside-toplevel
  shared = params["shared"]
  encoder = shared["feature_encoder"]
  level = shared["connection"]["level_0"]
  pairs = [(table.weight, encoder[f"embed_{name}"])
           for name, table in net.tables.items()]
  for i, layer in enumerate(net.experts):
    dense = level["shared_experts"][f"StackedColumnLayer_{i}"][
        "StackedDense_0"]
    pairs += [(layer.kernel, dense["kernel"]), (layer.bias, dense["bias"])]
  gates = level["task_gates"]["StackedDense_0"]
  pairs += [(net.gates.kernel, gates["kernel"]),
            (net.gates.bias, gates["bias"])]
  for k, task in enumerate(task_names):
    linears = [m for m in net.towers[k] if isinstance(m, nn.Linear)]
    for j, linear in enumerate(linears):
      dense = params["towers"][task][f"Dense_{j}"]
      pairs += [(linear.weight, np.asarray(dense["kernel"]).T),
                (linear.bias, dense["bias"])]
  pairs = [(p, np.ascontiguousarray(a, np.float32)) for p, a in pairs]
  if (len(pairs) != len(jax.tree_util.tree_leaves(params))
      or len(pairs) != len(list(net.parameters()))
      or any(tuple(p.shape) != a.shape for p, a in pairs)):
    raise ValueError("jax_param_pairs: the JAX and PyTorch parameter sets "
                     "do not match one to one")
  return pairs


def load_jax_params(net, params, task_names):
  """Copies the JAX parameters into the `MMoENet` `net`; returns `net`."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    for p, a in jax_param_pairs(net, params, task_names):
      p.copy_(torch.tensor(a))
  return net


def mmoe_pair(batch_size: int, cfg=None, data: Optional[dict] = None
              ) -> Pair:
  """The Census-sized MMoE of `benchmarks.throughput` (`cfg` and `data` as
  `throughput.build`'s, to shrink it in tests); every PyTorch model starts
  from the JAX initial weights."""
  from benchmarks import throughput, torch_mtl  # pylint: disable=import-outside-toplevel
  model, tasks, batch, params = throughput.build("mmoe", batch_size, cfg,
                                                 data)
  names = [t.name for t in tasks]
  make = lambda: load_jax_params(torch_mmoe(model), params, names)
  torch_count = torch_mtl.num_parameters(make())
  check_param_counts("mmoe", param_count(params), torch_count)
  conn = model.connection
  cats = [f for f in model.features if f.kind == "categorical"]
  numeric = sum(f.dim for f in model.features if f.kind == "numeric")
  description = (
      f"Census-sized MMoE (`benchmarks.throughput` 'mmoe'): {len(cats)} "
      f"categorical features ({cats[0].embed_dim}-dim embeddings, "
      f"{sum(f.num_rows for f in cats)} rows in all) + {numeric} numerics "
      f"-> {conn.num_experts} experts of {widths(conn.expert_hidden)} ReLU "
      f"units, one softmax gate per task, towers of "
      f"{widths(model.tower_hidden)} ReLU units, K={len(tasks)} binary "
      f"tasks (mean BCE on logits); rows of J over embeddings + experts + "
      f"gates, rep = each task's gate-mixed expert output")
  return Pair("mmoe", description, model, tasks, batch, params,
              {f.name: np.asarray(batch[f.name]) for f in model.features},
              [np.asarray(batch[t.label]) for t in tasks], make,
              param_count(params), torch_count)


def widths(hidden) -> str:
  return "x".join(str(h) for h in hidden)


def make_pair(name: str, k: Optional[int], batch_size: int) -> Pair:
  if name == "mlp":
    return mlp_pair(k or MLP_K, batch_size)
  if name == "mmoe":
    return mmoe_pair(batch_size)
  raise ValueError(f"model {name!r} is not one of {MODELS}")


def jax_entries(pair: Pair, names):
  """(meta, fn, state) per JAX row."""
  from mtrec_jax import weighting  # pylint: disable=import-outside-toplevel
  from mtrec_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from mtrec_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
  optimizer = optax.adam(1e-3)
  out = []
  for name in names:
    strategy = weighting.build(name, **jax_hparams(name))
    modes = ("loss",) if strategy.kind == "loss" else ("params", "rep")
    for mode in modes:
      step = jax.jit(make_train_step(
          pair.model, pair.tasks, strategy, optimizer,
          "" if mode == "loss" else mode, jacobian="unrolled"))
      state = state_lib.create(pair.params, optimizer, strategy,
                               len(pair.tasks), jax.random.PRNGKey(1))
      compiled = step.lower(state, pair.batch).compile()
      out.append(({"side": "jax", "strategy": name, "mode": mode,
                   "flops": step_flops(compiled)},
                  lambda s, b, c=compiled: c(s, b)[0], state))
  return out


def torch_step(pair: Pair, name: str, mode: str):
  """The `torch_mtl.LibMTLStep` of one strategy and mode ("loss": mean)."""
  from benchmarks import torch_mtl  # pylint: disable=import-outside-toplevel
  return torch_mtl.LibMTLStep(
      name, pair.torch_inputs, pair.torch_labels, model=pair.make_torch(),
      cagrad_c=CAGRAD_C, mode="params" if mode == "loss" else mode)


def torch_entries(pair: Pair, names, warmup: int):
  """(meta, fn, state) per PyTorch row (mean: one backward pass; the
  gradient methods in LibMTL's "params" and "rep" modes); each step warmed
  up `warmup` times."""
  out = []
  for name in names:
    for mode in (("loss",) if name == "mean" else ("params", "rep")):
      step = torch_step(pair, name, mode)
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
  p.add_argument("--model", choices=MODELS, default="mlp",
                 help="mlp: shared bottom 2x512 (default); mmoe: the "
                 "Census-sized MMoE of benchmarks.throughput")
  p.add_argument("--quick", action="store_true",
                 help="2 rounds of 2 steps (a smoke run)")
  p.add_argument("--json", help="output JSON path (default "
                 "benchmarks/results/peers_cpu.json, peers_cpu_mmoe.json "
                 "for --model mmoe)")
  p.add_argument("--k", type=int, default=None,
                 help=f"number of tasks of the mlp model (default {MLP_K}); "
                 "the mmoe model has the 2 Census tasks")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--strategies", default=",".join(STRATEGIES))
  args = p.parse_args(argv)
  if args.model == "mmoe" and args.k not in (None, 2):
    p.error("--k: the mmoe model has 2 tasks")
  torch = import_torch()
  names = args.strategies.split(",")
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  rounds, iters = (2, 2) if args.quick else (args.rounds, args.iters)
  pair = make_pair(args.model, args.k, args.batch_size)
  k = len(pair.tasks)
  entries = jax_entries(pair, names) + torch_entries(pair, names, warmup=3)
  with OtherLoad() as load:
    timed = time_rounds([(fn, st) for _, fn, st in entries], pair.batch,
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
  payload = {"device": device, "model": pair.name,
             "model_description": pair.description,
             "params": {"jax": pair.jax_params, "torch": pair.torch_params},
             "k": k, "batch_size": args.batch_size,
             "rounds": rounds, "iters": iters, "threads": threads,
             "torch_version": torch.__version__, "cpu": platform.processor()
             or platform.machine(), "agreement": agreement(k),
             "other_load": load.value, "matmul_peak": peak,
             "peak_gflops": max(r["gflops"] for r in peak),
             "rows": rows, "measured": measured}
  write_outputs(output_name(pair.name), payload, args.json, summary(payload))


def output_name(model: str) -> str:
  """peers_cpu[_mmoe] on CPU, peers[_mmoe] elsewhere (the mlp names are
  those of the results files made before `--model`)."""
  base = "peers_cpu" if jax.devices()[0].platform == "cpu" else "peers"
  return base if model == "mlp" else f"{base}_{model}"


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
  lines = [f"# JAX vs LibMTL-style PyTorch step time on {payload['device']}"
           f", model {payload['model']}", "",
           f"Model {payload['model']}: {payload['model_description']}; "
           f"{payload['params']['jax']:,} parameters on each side; batch "
           f"{payload['batch_size']}, Adam 1e-3; median of "
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
