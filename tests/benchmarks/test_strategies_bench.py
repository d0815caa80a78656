"""The strategy benchmark's row selection: variants (MoDo and SDMGrad with
one batch) get rows of their own, built with their settings, in the modes
where they differ from the default.  No timing here (the step of the
benchmark's 2 x 512 model takes seconds to compile per row)."""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` is not an installed package
  sys.path.insert(0, str(ROOT))

from benchmarks import strategies as bench  # noqa: E402
from mtrec_jax.weighting import sampling  # noqa: E402


def test_variants_follow_their_strategy():
  assert bench.with_variants(["mean", "modo", "sdmgrad"]) == [
      "mean", "modo", "modo_single_batch", "sdmgrad", "sdmgrad_single_batch"]


def test_single_batch_variants_read_no_extra_batches():
  for base in ("modo", "sdmgrad"):
    default, single = bench.build(base), bench.build(f"{base}_single_batch")
    assert single.hparams["independent_batches"] is False
    assert default.hparams["independent_batches"] is True
    assert sampling.extra_batches(default, "params")[1]  # double sampling
    assert sampling.extra_batches(single, "params") == ("train", ())
    modes, skipped = bench.modes_of(f"{base}_single_batch", single)
    assert modes == ("params", "params_unrolled") and not skipped
