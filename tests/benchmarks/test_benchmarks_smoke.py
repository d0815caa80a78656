"""Smoke test of the throughput and roofline benchmarks on tiny models.

Why: the benchmark scripts run only by hand, so an API change in the train
step or the models would otherwise break them unseen.  Checks that their
measuring functions return sane rows (positive times, FLOPs and fractions)
on a 2-feature census-like MLP with 8 units (the Transformer encoder's step
takes 10-40 s to compile even when tiny, so only its batch maker is
checked).  No torch needed (`benchmarks.peers` is not imported).
"""
from __future__ import annotations

import math
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` is not an installed package
  sys.path.insert(0, str(ROOT))

from benchmarks import roofline, throughput  # noqa: E402


import numpy as np  # noqa: E402


def tiny_configs():
  mlp = throughput.model_config("shared_bottom")
  mlp.bottom_hidden = (8,)
  mlp.tower_hidden = (4,)
  return {"shared_bottom": mlp}


TINY_DATA = {"shared_bottom": {"num_categorical": 2}}


def test_throughput_rows_are_sane():
  rows = throughput.measure(
      ("shared_bottom",), (("pcgrad", "params"),), batch_size=16, rounds=1,
      iters=1, configs=tiny_configs(), data=TINY_DATA,
      dtypes=("float32", "bfloat16"))
  r, r16 = rows
  assert (r["strategy"], r["mode"], r["num_tasks"]) == ("pcgrad", "params", 2)
  assert (r["dtype"], r16["dtype"]) == ("float32", "bfloat16")
  assert r16["step_ms"] > 0 and r16["params"] == r["params"]
  assert r["step_ms"] > 0 and r["compile_ms"] > 0
  assert r["examples_per_s"] == pytest.approx(16 / (r["step_ms"] / 1e3))
  assert r["flops"] > 0 and r["params"] > 0 and r["xla_step_mb"] > 0
  assert r["peak_mb"] > 0 or math.isnan(r["peak_mb"])
  table = throughput.summary(rows, "cpu")
  assert "| shared_bottom | float32 | pcgrad |" in table
  assert "| shared_bottom | bfloat16 | pcgrad |" in table


def test_roofline_rows_are_sane():
  peak_rows = roofline.matmul_peak((64,), iters=1)
  peak = max(r["gflops"] for r in peak_rows)
  assert peak > 0
  rows = roofline.with_fractions(roofline.measure(
      ("shared_bottom",), (16,), ("mean",), rounds=1, iters=1,
      configs=tiny_configs(), data=TINY_DATA), peak)
  (row,) = rows
  assert row["flops"] > 0 and row["step_ms"] > 0
  assert row["gflops"] == pytest.approx(row["flops"] / row["step_ms"] / 1e6)
  assert row["fraction"] == pytest.approx(row["gflops"] / peak)
  assert "| shared_bottom | 16 | mean |" in roofline.summary(rows, peak_rows,
                                                            "cpu")


def test_sequence_batch_is_left_padded():
  features, tasks, batch = throughput.sequence_like(32, num_items=20,
                                                    seq_len=6)
  ids = batch["history"]
  assert ids.shape == (32, 6) and features[0].max_len == 6
  assert np.all(ids[:, -1] > 0) and np.all(ids < 20)  # the newest item last
  # Once a row's history starts, no padding follows (left padding).
  started = np.maximum.accumulate(ids > 0, axis=1)
  assert np.all((ids > 0) == started)
  assert [t.name for t in tasks] == ["next_item", "rating", "like"]


def test_cost_analysis_flops_of_a_matmul():
  """XLA counts a [m, k] x [k, n] matmul as 2 m n k FLOPs (the roofline's
  unit), whether cost_analysis returns a dict or a list of dicts."""
  import jax
  import jax.numpy as jnp
  compiled = jax.jit(lambda a, b: a @ b).lower(
      jnp.ones((8, 16)), jnp.ones((16, 4))).compile()
  assert throughput.step_flops(compiled) == pytest.approx(2 * 8 * 16 * 4)
