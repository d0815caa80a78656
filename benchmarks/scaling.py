"""Data-parallel scaling of the train step over 1, 2, 4, 8 devices.

    python -m benchmarks.scaling [--devices 1,2,4,8] [--quick] [--json OUT]

One model (shared-bottom MLP, K regression tasks) and the strategies `mean`
(one backward pass) and `pcgrad` (params mode: K backward passes and the
Gramian, reduced across devices), trained with `parallel.jit_train_step` on a
("data",) mesh of each device count:

* weak scaling: a fixed batch per device (global batch = per-device x N);
  ideal: constant step time, examples/s growing N-fold;
* strong scaling: a fixed global batch split N ways; ideal: step time / N.

Step times follow `common.time_interleaved` (the strategies of one scaling
and device count take turns).  On a CPU host each device count runs in its
own subprocess with N fake devices (XLA_FLAGS
--xla_force_host_platform_device_count=N), which share the host's cores: that
checks the harness, not the scaling.  On a GPU/TPU host the first N real
devices are used in this process.  Writes JSON {"device", "rows": [{"devices",
"scaling", "strategy", "global_batch", "step_ms", "compile_ms",
"examples_per_s"}]} and a Markdown summary (default
benchmarks/results/scaling.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import describe_device, time_interleaved, write_outputs
from mtrec_jax import weighting
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.features import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec
from mtrec_jax.train import parallel
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.step import make_train_step

ROW_PREFIX = "SCALING_ROW "


def setup(k: int, input_dim: int, hidden: int):
  cfg = default_model_config()
  cfg.name = "shared_bottom"
  cfg.bottom_hidden = (hidden, hidden)
  cfg.tower_hidden = (64,)
  tasks = tuple(TaskSpec(f"t{i}", f"y{i}", "regression") for i in range(k))
  model = build_model(cfg, (FeatureSpec("x", "numeric", dim=input_dim),),
                      tuple((t.name, t.out_dim) for t in tasks))
  return model, tasks


def make_batch(k: int, input_dim: int, size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(size, input_dim)).astype(np.float32)}
  for i in range(k):
    batch[f"y{i}"] = rng.normal(size=(size,)).astype(np.float32)
  return batch


def measure(n: int, args) -> list[dict]:
  """Rows for one device count (the first `n` devices of this process)."""
  model, tasks = setup(args.k, args.input_dim, args.hidden)
  mesh = parallel.make_mesh(n, 1, devices=jax.devices()[:n])
  optimizer = optax.adam(1e-3)
  params = model.init(jax.random.PRNGKey(0),
                      make_batch(args.k, args.input_dim, 2))["params"]
  rows = []
  for scaling, size in (("weak", args.per_device_batch * n),
                        ("strong", args.global_batch)):
    if size % n:
      print(f"skipping strong scaling on {n} devices: global batch {size} "
            f"is not a multiple of {n}", file=sys.stderr)
      continue
    batch = parallel.shard_batch(make_batch(args.k, args.input_dim, size), mesh)
    entries, metas = [], []
    for name in args.strategies:
      strategy = weighting.build(name)
      mode = "" if strategy.kind == "loss" else "params"
      state = state_lib.create(params, optimizer, strategy, args.k,
                               jax.random.PRNGKey(1))
      shardings = parallel.state_sharding(state, mesh)
      step = parallel.jit_train_step(
          make_train_step(model, tasks, strategy, optimizer, mode), mesh,
          shardings, donate=True)
      # A copy: the step donates its state, and the strategies share params.
      state = jax.device_put(jax.tree_util.tree_map(jnp.copy, state),
                             shardings)
      entries.append((lambda s, b, step=step: step(s, b)[0], state))
      metas.append({"devices": n, "scaling": scaling, "strategy": name,
                    "mode": mode or "loss", "global_batch": size,
                    "per_device_batch": size // n})
    timed = time_interleaved(entries, batch, rounds=args.rounds,
                             iters=args.iters)
    for meta, (ms, first) in zip(metas, timed):
      rows.append({**meta, "step_ms": ms, "compile_ms": first,
                   "examples_per_s": meta["global_batch"] / ms * 1e3})
  return rows


def _child(n: int, argv: list[str]) -> list[dict]:
  """Runs this module with `n` fake CPU devices and returns its rows."""
  flags = os.environ.get("XLA_FLAGS", "")
  flags = " ".join(f for f in flags.split()
                   if "xla_force_host_platform_device_count" not in f)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"{flags} --xla_force_host_platform_device_count={n}").strip())
  proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", *argv,
                         "--child", str(n)], env=env, capture_output=True,
                        text=True)
  if proc.returncode:
    raise RuntimeError(f"the {n}-device run failed (exit {proc.returncode}):"
                       f"\n{proc.stderr[-3000:]}")
  return [json.loads(line[len(ROW_PREFIX):]) for line in
          proc.stdout.splitlines() if line.startswith(ROW_PREFIX)]


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--devices", default="1,2,4,8",
                 help="comma-separated device counts")
  p.add_argument("--quick", action="store_true",
                 help="a small model, small batches, few timed steps (a "
                 "smoke run of the harness)")
  p.add_argument("--json", help="output JSON path (default "
                 "benchmarks/results/scaling.json)")
  p.add_argument("--strategies", default="mean,pcgrad")
  p.add_argument("--k", type=int, default=4, help="number of tasks")
  p.add_argument("--per-device-batch", type=int, default=256)
  p.add_argument("--global-batch", type=int, default=1024)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.strategies = args.strategies.split(",")
  args.input_dim, args.hidden = (64, 128) if args.quick else (256, 512)
  if args.quick:
    args.per_device_batch = min(args.per_device_batch, 32)
    args.global_batch = min(args.global_batch, 128)
    args.rounds, args.iters = 2, 3
  counts = [int(c) for c in args.devices.split(",")]

  if args.child:  # one device count, in a subprocess with fake devices
    for row in measure(args.child, args):
      print(ROW_PREFIX + json.dumps(row), flush=True)
    return

  platform = jax.devices()[0].platform
  rows = []
  for n in counts:
    if platform == "cpu":
      new = _child(n, [a for a in argv])
    elif n <= jax.device_count():
      new = measure(n, args)
    else:
      print(f"skipping {n} devices: this host has {jax.device_count()}",
            file=sys.stderr)
      continue
    for row in new:
      print(row, flush=True)
    rows += new
  fake = platform == "cpu"
  device = (f"cpu, fake devices sharing {os.cpu_count()} cores" if fake
            else describe_device())
  payload = {"device": device, "fake_cpu_devices": fake, "k": args.k,
             "model": {"bottom_hidden": [args.hidden] * 2,
                       "input_dim": args.input_dim},
             "rounds": args.rounds, "iters": args.iters, "quick": args.quick,
             "rows": rows}
  write_outputs("scaling", payload, args.json, summary(rows, device, fake))


def summary(rows, device: str, fake: bool) -> str:
  """Markdown: step ms, examples/s and efficiency per strategy, scaling and
  device count."""
  lines = [f"# Data-parallel scaling on {device}", ""]
  if fake:
    lines += ["Fake CPU devices (`--xla_force_host_platform_device_count`) "
              "share the host's cores, so these numbers only check the "
              "harness; they say nothing about scaling on real devices.", ""]
  counts = sorted({r["devices"] for r in rows})
  keyed = {(r["scaling"], r["strategy"], r["devices"]): r for r in rows}
  for scaling, ideal in (("weak", "constant step time"),
                         ("strong", "step time / N")):
    sub = [r for r in rows if r["scaling"] == scaling]
    if not sub:
      continue
    batches = ", ".join(f"N={r['devices']}: {r['global_batch']}"
                        for r in sub if r["strategy"] == sub[0]["strategy"])
    lines += [f"## {scaling.capitalize()} scaling (ideal: {ideal}; global "
              f"batch {batches})", "",
              "| strategy | " + " | ".join(f"N={n}" for n in counts) + " |",
              "|---|" + "---|" * len(counts)]
    for strategy in dict.fromkeys(r["strategy"] for r in sub):
      base = keyed.get((scaling, strategy, counts[0]))
      cells = []
      for n in counts:
        r = keyed.get((scaling, strategy, n))
        if r is None:
          cells.append("-")
          continue
        cell = f"{r['step_ms']:.2f} ms, {r['examples_per_s']:,.0f} ex/s"
        if base is not None and n != counts[0]:
          # Efficiency against the smallest count: 1.0 is ideal.
          ratio = base["step_ms"] / r["step_ms"]
          eff = ratio if scaling == "weak" else ratio * counts[0] / n
          cell += f" (eff {eff:.2f})"
        cells.append(cell)
      lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
