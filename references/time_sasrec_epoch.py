"""Seconds per epoch of our SASRec step at the reference configuration
(`ml100k-sasrec-ref`): the jitted train step of `mtrec run`, timed.

    MTREC_DATA_DIR=../shared/data python -m references.time_sasrec_epoch \
        --epochs 3 [--loss-path gather|full] [--set KEY=VALUE ...]

An epoch is the reference's: ceil(943 / 128) = 8 steps of batch 128.
Compilation and a first warm-up epoch are excluded; wall time and this
process's CPU time (all threads) per epoch are printed as JSON.  Run it
right after the reference's timing on the same cores (references/README.md)
so both see the same load.  `--loss-path full` times the bce loss computed
the old way (full [B, L, V] logits, two read off) for comparison.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import optax

from mtrec_jax import config as config_lib
from mtrec_jax.experiment import get_experiment
from mtrec_jax.tasks import auxiliary
from mtrec_jax.train import compiler, loop, parallel
from mtrec_jax.train.step import make_train_step


def _full_logits_bce(self, encoder, head, batch, key, train):
  """The pre-gather bce (for --loss-path full)."""
  ids = jnp.asarray(batch[self.feature])
  targets = jnp.asarray(batch[self.targets])
  logits = self._logits(encoder, head, ids, train)
  negatives = self.bce_negatives(key, targets, batch)
  pos = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  neg = jnp.take_along_axis(logits, negatives[..., None], -1)[..., 0]
  per = (optax.sigmoid_binary_cross_entropy(pos, 1.0)
         + optax.sigmoid_binary_cross_entropy(neg, 0.0))
  w = ((targets != 0) & (ids != 0)).astype(jnp.float32)
  return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--loss-path", choices=("gather", "full"), default="gather")
  p.add_argument("--experiment", default="ml100k-sasrec-ref")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config overrides, as `mtrec run --set` (ablations)")
  a = p.parse_args(argv)
  if a.loss_path == "full":
    auxiliary.NextItemSequenceTask.loss = _full_logits_bce
  cfg = config_lib.apply_overrides(get_experiment(a.experiment).config,
                                   a.set)
  c = loop.Components(cfg)
  state = loop.init_state(c)
  mesh = parallel.make_mesh(None, 1)
  shardings = parallel.state_sharding(state, mesh, False)
  step_fn = parallel.jit_train_step(
      make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                      cfg.strategy.mode,
                      jacobian=parallel.jacobian_engine("auto"),
                      dropout_bits=cfg.train.dropout_bits),
      mesh, shardings,
      compiler_options=compiler.compiler_options(cfg.train.compiler))
  state = jax.device_put(state, shardings)
  rows = len(c.dataset.splits["train"]["user"])
  per_epoch = math.ceil(rows / cfg.train.batch_size)
  batches = loop.train_batches(c.dataset.splits["train"],
                               cfg.train.batch_size, cfg.seed)
  load = os.getloadavg()[0]
  t0 = time.time()
  state, _ = step_fn(state, next(batches))
  jax.block_until_ready(state)
  compile_s = time.time() - t0
  times = []
  for epoch in range(a.epochs + 1):
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(per_epoch):
      state, metrics = step_fn(state, next(batches))
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - w0, time.process_time() - c0))
  times = times[1:]  # the first epoch is a warm-up
  flags = os.environ.get("XLA_FLAGS", "")
  out = {"impl": f"mtrec-jax ({a.loss_path})" + "".join(
             f" {kv}" for kv in a.set) + (f" XLA_FLAGS={flags}" if flags
                                          else ""), "steps_per_epoch": per_epoch,
         "batch_size": cfg.train.batch_size, "max_len": cfg.data.max_len,
         "compile_s": compile_s, "load_avg_1m": load,
         "wall_s_per_epoch": [t[0] for t in times],
         "cpu_s_per_epoch": [t[1] for t in times],
         "jax": jax.__version__, "devices": str(jax.devices())}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
