"""XLA compile presets for the training step (`train.compiler`).

Why: on CPU, XLA's defaults are not the fastest choice for our sequence
models.  At SASRec's reference configuration (length 200, 50 units) three
CPU options together make an epoch faster on the 2-core machine that runs
our experiments (references/time_sasrec_epoch.py; the times are in
references/results/sasrec_reference.md): YNNPACK fusions off (slower than
XLA's own loop fusions for these shapes), oneDNN for the matmuls, and the
scheduler that orders independent ops for concurrency.  They are given
per program (`jax.jit(..., compiler_options=...)`), so one process can train
runs with different presets.

The presets change how XLA fuses and which matmul kernels run, hence the
rounding of the results (not their math): the preset is part of a run's
config and of its hash.  'default' is what every run used before the key
existed.  Only the training step is compiled with a preset; evaluation
keeps XLA's defaults, so the metrics of runs with different presets are
computed by the same program.  The options are XLA:CPU's: on another
backend every preset compiles as 'default'.
"""
from __future__ import annotations

from typing import Any

import jax

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cpu_fast": {
        "xla_cpu_experimental_ynn_fusion_type": "",
        "xla_cpu_use_onednn": True,
        "xla_cpu_enable_concurrency_optimized_scheduler": True,
    },
}


def check(preset: str) -> str:
  """`preset` if it names one of `PRESETS`; else a ValueError naming them."""
  if preset not in PRESETS:
    from mtrec_jax.registry import closest
    close = closest(str(preset), list(PRESETS))
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"train.compiler must be one of "
                     f"{', '.join(map(repr, PRESETS))}, got {preset!r}.{hint}")
  return preset


def compiler_options(preset: str, platform: str | None = None
                     ) -> dict[str, Any] | None:
  """The `compiler_options` of `jax.jit` for `preset` on `platform`
  (default: JAX's default backend); None where it sets nothing."""
  options = PRESETS[check(preset)]
  platform = platform or jax.default_backend()
  if not options or platform != "cpu":
    return None
  return dict(options)
