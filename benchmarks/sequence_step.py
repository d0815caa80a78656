"""The all-positions next-item train step: today's path against the fast one.

    python -m benchmarks.sequence_step [--quick] [--json OUT]

Setting: `ml100k-mtl`'s next_item row (= `ml100k-sasrec`'s softmax row) on
the real MovieLens-100K training split ($MTREC_DATA_DIR): one row per user,
the last 50 training items, a causal 2-layer pre-LN Transformer (32 units,
2 heads, dropout 0.2), the `next_all` task (full softmax over all 1,683 ids,
BERT4Rec's 'mlp' output head), batch 128, AdamW, strategy `mean`.  Every
variant trains from the same initial state on the same batch (the first of
the seed-0 shuffle); the rows of one table are timed in interleaved rounds
(`common.time_interleaved`), so background load slows them alike.

Variants of the full jitted train step (forward, backward, AdamW update):

* ``today``: ``aux.next_all.softmax_impl='full'`` ([B, L, V] logits,
  optax's cross-entropy), Threefry lowered as JAX lowers it on CPU (its 20
  rounds rolled into a loop): what every stored run used;
* ``fused``: ``softmax_impl='fused'`` (`tasks.catalogue_softmax`: row chunks,
  padded positions skipped, the gradient in the same pass): the same loss
  and gradient up to float rounding;
* ``unrolled`` and ``fused+unrolled``: Threefry lowered unrolled on CPU too
  (`unrolled_threefry`, an experiment: the same random bits, so the same
  run);
* ``+noynn``: compiled without XLA:CPU's YNNPACK fusions (`NO_YNN`, per
  compilation, so in the same process as the default rows): other kernels
  for the same ops, so the same math up to float rounding;
* ``fused+hash`` and ``fused+hash+cpu_fast``: the fused softmax with the
  two switches a run sets in its config: ``train.dropout_bits='hash'``
  (`train/dropout_bits.py`: a counter hash instead of Threefry, other
  masks of the same distribution, so another random stream, not the same
  run) and ``train.compiler='cpu_fast'`` (`train/compiler.py`: no YNNPACK,
  oneDNN matmuls, the concurrency scheduler; the same math up to float
  rounding).

Components, each timed old against new in its own interleaved table:

* ``softmax``: value and gradient of the next-item cross-entropy alone, from
  fixed [B, L, 32] head outputs, the table and the bias (the real batch's
  targets and padding): plain [B, L, V] formula vs `catalogue_softmax_loss`;
* ``loss_grad``: the next_all loss and its parameter gradient (no optimizer);
* ``dropout_bits``: the step's dropout masks alone (as many Bernoulli draws
  as one training forward pass makes), by PRNG implementation: Threefry
  rolled and unrolled (the same bits), and XLA's RngBitGenerator ('rbg',
  'unsafe_rbg': other random streams).

Multi-task step (``--parts multitask``): `ml100k-strategies`' four tasks
(next_all, rating_all, like_all, genre_all; TASK_SETS['all']) under
``mean`` (one backward pass) and ``mgda`` in params mode (the [4, params]
Jacobian, as the Gramian strategies of that sweep): ``mt_today`` (full
softmax, one encoder pass per task), ``mt_fused`` (what `ml100k-strategies`
runs: fused softmax, one pass per task) and ``mt_fused_shared``
(``aux.next_all.shared_pass``: one encoder pass shared by the four tasks;
the same losses and gradients without dropout, shared dropout masks with
it, `tasks.auxiliary`).

Also XLA's FLOP count of each compiled step (cost analysis; a loop body
is counted once: the fused loss's chunk loop and the rolled Threefry loop,
so those counts are lower bounds) and its memory (arguments, outputs and
temporaries, XLA's memory analysis).  Writes JSON and a
Markdown summary to benchmarks/results/sequence_step_<platform>.*.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import describe_device, time_interleaved, write_outputs
from benchmarks.throughput import OtherLoad, step_bytes, step_flops
from mtrec_jax import config as config_lib
from mtrec_jax.data.pipeline import train_batches
from mtrec_jax.tasks.catalogue_softmax import (PADDING_LOGIT,
                                               catalogue_softmax_loss)
from mtrec_jax.train import compiler, loop
from mtrec_jax.train.step import make_train_step

# XLA:CPU compiler options of the 'noynn' rows: no YNNPACK fusions (XLA's
# own kernels for the dots and elementwise work instead); the same as
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= for a whole process.
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
# name -> (softmax_impl, Threefry on CPU unrolled, compile options,
#          train.dropout_bits); compile options: 'default', 'noynn'
#          (`NO_YNN`) or a `train.compiler` preset ('cpu_fast').
VARIANTS = {
    "today": ("full", False, "default", "threefry"),
    "fused": ("fused", False, "default", "threefry"),
    "unrolled": ("full", True, "default", "threefry"),
    "fused+unrolled": ("fused", True, "default", "threefry"),
    "today+noynn": ("full", False, "noynn", "threefry"),
    "fused+noynn": ("fused", False, "noynn", "threefry"),
    "fused+unrolled+noynn": ("fused", True, "noynn", "threefry"),
    "fused+hash": ("fused", False, "default", "hash"),
    "fused+hash+cpu_fast": ("fused", False, "cpu_fast", "hash"),
}


MT_VARIANTS = {  # name -> (softmax_impl, aux.next_all.shared_pass, no YNN)
    "mt_today": ("full", False, False),
    "mt_fused": ("fused", False, False),
    "mt_fused_shared": ("fused", True, False),
    "mt_fused_shared+noynn": ("fused", True, True),
}
PARTS = ("step", "softmax", "loss_grad", "dropout", "multitask")


def compile_options(name: str) -> dict | None:
  """XLA compiler options of a variant: None ('default'), `NO_YNN`
  ('noynn') or the `train.compiler` preset of that name."""
  if name == "noynn":
    return NO_YNN
  return compiler.compiler_options(name)


def unrolled_threefry(unrolled: bool) -> None:
  """Lower Threefry on CPU unrolled (as JAX does on GPU/TPU: the same bits)
  or rolled into a 5-iteration loop (JAX's CPU default, to save compile
  time), for the programs lowered next.  An experiment, through JAX's
  private names; the library does not do this (it did not speed up the
  step)."""
  from jax._src.interpreters import mlir
  from jax._src.random import threefry2x32 as tf
  rule = (tf._threefry2x32_lowering_rule if unrolled
          else tf._threefry2x32_cpu_lowering_rule)
  mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")


def experiment_config():
  """ml100k-mtl's next_item row (experiments/ml100k_mtl.py)."""
  from experiments.ml100k_mtl import TASK_SETS, all_positions_config
  return config_lib.apply_overrides(all_positions_config(),
                                    TASK_SETS["next_item"])


def variant_config(base, softmax_impl: str):
  return config_lib.apply_overrides(base, {
      "aux.next_all.softmax_impl": softmax_impl})


def first_batch(c: loop.Components) -> dict:
  cfg = c.config
  batch = next(iter(train_batches(c.dataset.splits["train"],
                                  cfg.train.batch_size, cfg.seed)))
  return jax.device_put(dict(batch))


def step_entries(base, variants):
  """{name: (jitted step, state, compiled facts)} sharing one initial state."""
  out, state, batch = {}, None, None
  for name in variants:
    softmax_impl, unrolled, options, bits = VARIANTS[name]
    c = loop.Components(variant_config(base, softmax_impl))
    if state is None:
      state, batch = loop.init_state(c), first_batch(c)
    fn = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                                 c.config.strategy.mode, dropout_bits=bits))
    unrolled_threefry(unrolled)  # for this lowering
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile(
        compiler_options=compile_options(options))
    facts = {"compile_ms": (time.perf_counter() - t0) * 1e3,
             "gflop": step_flops(compiled) / 1e9,
             "xla_step_mb": step_bytes(compiled) / 2 ** 20}
    out[name] = (lambda s, b, fn=compiled: fn(s, b)[0], state, facts)
  unrolled_threefry(False)
  return out, batch


def multitask_config(strategy: str, mode: str):
  """ml100k-strategies' four-task row under `strategy` (gradient `mode`)."""
  from experiments.ml100k_mtl import TASK_SETS
  return config_lib.apply_overrides(experiment_config(), {
      **TASK_SETS["all"], "strategy.name": strategy, "strategy.mode": mode})


def multitask_entries(strategy: str, mode: str):
  """{name: (step, state, compiled facts)} of `MT_VARIANTS`, one initial
  state and batch."""
  base = multitask_config(strategy, mode)
  out, state, batch = {}, None, None
  for name, (impl, shared, no_ynn) in MT_VARIANTS.items():
    c = loop.Components(config_lib.apply_overrides(base, {
        "aux.next_all.softmax_impl": impl,
        "aux.next_all.shared_pass": shared}))
    if state is None:
      state, batch = loop.init_state(c), first_batch(c)
    fn = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                                 c.config.strategy.mode))
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile(
        compiler_options=NO_YNN if no_ynn else None)
    facts = {"compile_ms": (time.perf_counter() - t0) * 1e3,
             "gflop": step_flops(compiled) / 1e9,
             "xla_step_mb": step_bytes(compiled) / 2 ** 20}
    out[name] = (lambda s, b, fn=compiled: fn(s, b)[0], state, facts)
  return out, batch


def step_diffs(entries: dict, batch) -> dict:
  """{name: largest |parameter difference| after one step from the shared
  initial state, against the 'today' row}: float rounding where the math
  is the same (fused softmax, other kernels), 0 where the program is."""
  def params(name):
    fn, state, _ = entries[name]
    return jax.tree_util.tree_leaves(fn(state, batch).params)
  ref = params("today")
  return {name: max(float(jnp.max(jnp.abs(a - b)))
                    for a, b in zip(ref, params(name)))
          for name in entries if name != "today"}


def blocking(compiled):
  """(state, batch) -> state for `time_interleaved`, waiting for the result
  of ``compiled(state)`` (the state itself is the unchanged input)."""
  return lambda s, _: (jax.block_until_ready(compiled(s)), s)[1]


def loss_grad_entries(base, batch):
  """{name: (fn, params)}: the next_all loss and its parameter gradient,
  today's way and the new way (fused softmax, unrolled Threefry)."""
  out = {}
  for name, impl in (("today", "full"), ("fused", "fused")):
    c = loop.Components(variant_config(base, impl))
    params = loop.init_state(c).params

    def grad(p, model=c.model):
      def loss(p):
        return model.apply({"params": p}, batch, jax.random.PRNGKey(1),
                           train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                           method="aux_losses")[0]
      return jax.grad(loss)(p)
    unrolled_threefry(False)
    out[name] = (blocking(jax.jit(grad).lower(params).compile()), params)
  return out


def softmax_entries(batch, num_items: int, width: int):
  """Old vs new cross-entropy (value and gradient) from fixed inputs."""
  ids, targets = batch["hist_items"], batch["seq_targets"]
  b, length = ids.shape
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(b, length, width)), jnp.float32)
  table = jnp.asarray(r.normal(size=(num_items, width)) * width ** -0.5,
                      jnp.float32)
  bias = jnp.zeros((num_items,), jnp.float32)
  weight = ((targets != 0) & (ids != 0)).astype(jnp.float32)

  def plain(x, table, bias):
    z = (x @ table.T + bias).at[..., 0].set(PADDING_LOGIT)
    ce = optax.softmax_cross_entropy_with_integer_labels(z, targets)
    return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)

  def fused(x, table, bias):
    total = catalogue_softmax_loss(x.reshape(-1, width), table,
                                   targets.reshape(-1), weight.reshape(-1),
                                   bias)
    return total / jnp.maximum(jnp.sum(weight), 1.0)

  out = {}
  for name, f in (("full", plain), ("fused", fused)):
    g = jax.jit(lambda s, f=f: jax.value_and_grad(f, argnums=(0, 1, 2))(*s))
    args = (x, table, bias)
    out[name] = (blocking(g.lower(args).compile()), args)
  old = jax.value_and_grad(plain, (0, 1, 2))(x, table, bias)
  new = jax.value_and_grad(fused, (0, 1, 2))(x, table, bias)
  diff = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new))]
  return out, diff


def dropout_entries(n: int, rate: float):
  """Drawing `n` dropout keep-flags, per PRNG implementation (and Threefry's
  lowering)."""
  out = {}
  for name, impl, unrolled in (("threefry2x32 rolled", "threefry2x32", False),
                               ("threefry2x32 unrolled", "threefry2x32",
                                True),
                               ("rbg", "rbg", False),
                               ("unsafe_rbg", "unsafe_rbg", False)):
    key = jax.random.key(0, impl=impl)
    f = jax.jit(lambda key: jax.random.bernoulli(key, 1.0 - rate, (n,)))
    unrolled_threefry(unrolled)
    out[name] = (blocking(f.lower(key).compile()), key)
  unrolled_threefry(False)
  return out


def dropout_draws(c: loop.Components, batch) -> int:
  """Bernoulli draws of one training forward pass of the encoder: counted
  from the jaxpr (every `random_bits` call's output size)."""
  state = loop.init_state(c)

  def loss(p):
    return c.model.apply({"params": p}, batch, jax.random.PRNGKey(1),
                         train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                         method="aux_losses")[0]
  total = 0

  def visit(jx):
    nonlocal total
    if hasattr(jx, "jaxpr"):  # a ClosedJaxpr
      jx = jx.jaxpr
    for eqn in jx.eqns:
      if eqn.primitive.name == "random_bits":
        total += int(np.prod(eqn.outvars[0].aval.shape))
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
            visit(sub)
  visit(jax.make_jaxpr(loss)(state.params))
  return total


def table(rows, ref: str) -> list[dict]:
  base = next(r for r in rows if r["name"] == ref)["ms"]
  return [{**r, "speedup": base / r["ms"]} for r in rows]


def timed(entries: dict, batch, rounds: int, iters: int) -> tuple[list, float]:
  with OtherLoad() as load:
    res = time_interleaved([(fn, s) for fn, s, *_ in entries.values()], batch,
                           rounds=rounds, iters=iters)
  rows = [{"name": n, "ms": ms, "first_call_ms": first}
          for n, (ms, first) in zip(entries, res)]
  return rows, load.value


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="2 rounds of 2 calls (smoke test)")
  p.add_argument("--json", default=None)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--parts", default=",".join(PARTS),
                 help=f"tables to measure, of {PARTS}")
  p.add_argument("--multitask-strategies", default="mean:params,mgda:params",
                 help="strategy:mode pairs of the multi-task tables")
  p.add_argument("--note", default="",
                 help="a line for the Markdown (e.g. other jobs running)")
  args = p.parse_args(argv)
  rounds, iters = (2, 2) if args.quick else (args.rounds, args.iters)
  os.environ.setdefault("MTREC_DATA_DIR", "../shared/data")
  base = experiment_config()
  variants = args.variants.split(",")
  if variants[0] != "today":
    variants = ["today"] + [v for v in variants if v != "today"]
  payload = {"device": describe_device(), "rounds": rounds, "iters": iters,
             "config": {"experiment": "ml100k-mtl (tasks=next_item)",
                        "batch_size": base.train.batch_size,
                        "max_len": base.data.max_len,
                        "hidden_dim": base.model.encoder.hidden_dim,
                        "num_layers": base.model.encoder.num_layers,
                        "head": base.aux.next_all.head}}

  name = f"sequence_step_{jax.devices()[0].platform}"

  payload["loadavg_start"] = os.getloadavg()

  def save():  # after every part, so a later failure keeps the tables
    payload["loadavg_end"] = os.getloadavg()
    write_outputs(name, payload, args.json, summary(payload, args.note))

  parts = args.parts.split(",")
  unknown = [x for x in parts if x not in PARTS]
  if unknown:
    raise SystemExit(f"--parts: unknown {unknown}; choose from {PARTS}")
  steps, batch = step_entries(base, variants if "step" in parts
                              else ["today"])
  c = loop.Components(base)
  num_items = c.dataset.features[[f.name for f in c.dataset.features].index(
      "hist_items")].num_rows
  weight = (batch["seq_targets"] != 0) & (batch["hist_items"] != 0)
  payload["real_positions"] = float(jnp.mean(weight))
  payload["num_items"] = int(num_items)
  if "step" in parts:
    rows, load = timed(steps, batch, rounds, iters)
    for r in rows:
      r.update(steps[r["name"]][2])
    payload["step"] = {"rows": table(rows, "today"), "other_load": load,
                       "max_abs_param_diff_vs_today": step_diffs(steps,
                                                                 batch)}
    print(payload["step"], flush=True)
    save()
  del steps

  if "softmax" in parts:
    soft, diff = softmax_entries(batch, num_items, base.data.embed_dim)
    rows, load = timed(soft, None, rounds, iters)
    payload["softmax"] = {"rows": table(rows, "full"), "other_load": load,
                          "max_abs_diff_value_and_grads": diff}
    print(payload["softmax"], flush=True)
    save()

  if "loss_grad" in parts:
    lg = loss_grad_entries(base, batch)
    rows, load = timed(lg, batch, rounds, iters)
    payload["loss_grad"] = {"rows": table(rows, "today"), "other_load": load}
    unrolled_threefry(False)
    print(payload["loss_grad"], flush=True)
    save()

  if "dropout" in parts:
    draws = dropout_draws(c, batch)
    drop = dropout_entries(draws, float(base.model.encoder.dropout))
    rows, load = timed(drop, None, rounds, iters)
    payload["dropout_bits"] = {"rows": table(rows, "threefry2x32 rolled"),
                               "other_load": load, "draws": draws}
    print(payload["dropout_bits"], flush=True)
    save()

  if "multitask" in parts:
    payload["multitask"] = {}
    for pair in args.multitask_strategies.split(","):
      strategy, mode = pair.split(":")
      mt, mt_batch = multitask_entries(strategy, mode)
      rows, load = timed(mt, mt_batch, rounds, iters)
      for r in rows:
        r.update(mt[r["name"]][2])
      payload["multitask"][pair] = {"rows": table(rows, "mt_today"),
                                    "other_load": load}
      print(pair, payload["multitask"][pair], flush=True)
      save()
      del mt

  save()


def summary(payload: dict, note: str) -> str:
  cfg = payload["config"]
  lines = [
      f"# All-positions next-item train step on {payload['device']}", "",
      f"{cfg['experiment']}: batch {cfg['batch_size']}, length "
      f"{cfg['max_len']}, {cfg['hidden_dim']} units, {cfg['num_layers']} "
      f"layers, head '{cfg['head']}', {payload['num_items']} item ids; "
      f"{payload['real_positions']:.1%} of the batch's positions are real "
      f"(the rest padding).  Median ms of {payload['rounds']} interleaved "
      f"rounds x {payload['iters']} calls.", ""]
  if note:
    lines += [note, ""]
  if "loadavg_start" in payload:
    lines += ["Load average (1, 5, 15 min) at the start: " + ", ".join(
        f"{x:.1f}" for x in payload["loadavg_start"]) + "; at the last "
        "table: " + ", ".join(f"{x:.1f}" for x in payload["loadavg_end"])
        + ".", ""]
  if "step" in payload:
    lines += ["## Full train step (forward, backward, AdamW)", "",
              "| variant | softmax_impl | dropout bits | XLA options | "
              "step ms | speed-up | XLA GFLOP | XLA MiB | compile ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["step"]["rows"]:
      s, u, options, bits = VARIANTS[r["name"]]
      if bits == "threefry":
        bits += " unrolled" if u else " rolled"
      lines.append(f"| {r['name']} | {s} | {bits} | {options} | "
                   f"{r['ms']:.1f} | "
                   f"{r['speedup']:.2f}x | {r['gflop']:.2f} | "
                   f"{r['xla_step_mb']:.0f} | {r['compile_ms']:.0f} |")
    diffs = payload["step"].get("max_abs_param_diff_vs_today", {})
    lines += ["", f"Other processes kept {payload['step']['other_load']:.2f} "
              f"cores busy on average while the steps were timed.  Largest "
              f"absolute parameter difference after one step from the same "
              f"state, against 'today': " + ", ".join(
                  f"{n} {d:.1e}" for n, d in diffs.items()) + " (AdamW's "
              f"first update is lr * g / (|g| + eps) per entry, so a "
              f"gradient entry near 0 whose rounding differs moves by up "
              f"to lr = 1e-3: rounding amplified by that normalisation; "
              f"today+noynn, the same program with other kernels, shows the "
              f"same size)" + (
                  "; the hash rows draw other dropout masks, so theirs is "
                  "the difference of another random stream, not rounding"
                  if any(VARIANTS[n][3] == "hash" for n in diffs) else "")
              + ".", ""]
  for key, title in (("softmax", "Cross-entropy and its gradient alone "
                      "(fixed [B, L, E] inputs)"),
                     ("loss_grad", "next_all loss and parameter gradient "
                      "(no optimizer)"),
                     ("dropout_bits", "Dropout masks of one step alone")):
    if key not in payload:
      continue
    part = payload[key]
    lines += [f"## {title}", "", "| implementation | ms | speed-up |",
              "|---|---|---|"]
    lines += [f"| {r['name']} | {r['ms']:.1f} | {r['speedup']:.2f}x |"
              for r in part["rows"]]
    extra = ""
    if key == "softmax":
      extra = (f" Largest absolute difference of value, dx, dtable, dbias "
               f"(full vs fused): "
               + ", ".join(f"{d:.1e}" for d in part[
                   "max_abs_diff_value_and_grads"]) + ".")
    if key == "dropout_bits":
      extra = f" {part['draws']:,} Bernoulli draws per step."
    lines += ["", f"Other load {part['other_load']:.2f} cores.{extra}", ""]
  for pair, part in payload.get("multitask", {}).items():
    strategy, mode = pair.split(":")
    lines += [f"## Multi-task step: next_all + rating_all + like_all + "
              f"genre_all, strategy {strategy} ({mode} mode)", "",
              "| variant | softmax_impl | shared_pass | YNNPACK | step ms | "
              "speed-up | XLA GFLOP | XLA MiB | compile ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in part["rows"]:
      impl, shared, y = MT_VARIANTS[r["name"]]
      lines.append(f"| {r['name']} | {impl} | {shared} | "
                   f"{'off' if y else 'on'} | {r['ms']:.1f} | "
                   f"{r['speedup']:.2f}x | {r['gflop']:.2f} | "
                   f"{r['xla_step_mb']:.0f} | {r['compile_ms']:.0f} |")
    lines += ["", f"Other load {part['other_load']:.2f} cores.", ""]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
