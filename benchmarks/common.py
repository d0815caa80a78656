"""Shared benchmark helpers: a fixed timing rule, device description, output."""
from __future__ import annotations

import json
import pathlib
import statistics
import time
from typing import Callable

import jax

from mtrec_jax.results.provenance import device_info, git_state, package_versions

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def time_step(fn: Callable, state, batch, *, warmup: int, iters: int
              ) -> tuple[float, float]:
  """(median step ms, first-call compile+run ms) of ``state = fn(state, batch)``.

  The rule: one untimed first call (compilation), `warmup` untimed calls, then
  `iters` calls each timed to completion with ``jax.block_until_ready``.
  """
  t0 = time.perf_counter()
  state = jax.block_until_ready(fn(state, batch))
  first_ms = (time.perf_counter() - t0) * 1e3
  for _ in range(warmup):
    state = fn(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state = jax.block_until_ready(fn(state, batch))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times), first_ms


def time_interleaved(entries, batch, *, rounds: int, iters: int,
                     settle: int = 0) -> list[tuple[float, float]]:
  """(median step ms, first-call ms) for each (fn, state) of `entries`.

  Every function is compiled and run once, then timed in `rounds` rounds of
  `iters` calls each, the functions taking turns within every round: a
  burst of background load then slows all of them alike instead of one row
  (timings of one row measured alone varied by ±20% on a 2-core machine).
  `settle` untimed calls open each entry's turn (see `benchmarks.peers`).
  """
  states, first = [], []
  for fn, state in entries:
    t0 = time.perf_counter()
    states.append(jax.block_until_ready(fn(state, batch)))
    first.append((time.perf_counter() - t0) * 1e3)
  samples: list[list[float]] = [[] for _ in entries]
  for _ in range(rounds):
    for i, (fn, _) in enumerate(entries):
      for _ in range(settle):
        states[i] = jax.block_until_ready(fn(states[i], batch))
      for _ in range(iters):
        t0 = time.perf_counter()
        states[i] = jax.block_until_ready(fn(states[i], batch))
        samples[i].append((time.perf_counter() - t0) * 1e3)
  return [(statistics.median(s), f) for s, f in zip(samples, first)]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
  """The lines of a Markdown table: `header`, then one line per row of
  already formatted cells."""
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(row) + " |" for row in rows])


def load_line(payload: dict) -> str:
  """The Markdown sentence on the machine's other load while timing, from a
  payload's ``other_load``, ``loadavg_before``, ``loadavg_after`` and
  ``cpu_count``: the reader's warning that absolute times are not a quiet
  machine's."""
  return (f"Other processes kept {payload['other_load']:.2f} cores busy "
          f"while timing (load average {payload['loadavg_before'][0]:.1f} "
          f"before, {payload['loadavg_after'][0]:.1f} after) on this shared "
          f"{payload['cpu_count']}-core machine: absolute times are slow and "
          "noisy; the ratios are what the interleaving protects.")


def describe_device() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind} x{len(jax.devices())}"


def write_outputs(name: str, payload: dict, json_path: str | None,
                  markdown: str) -> None:
  """Writes the JSON (to `json_path`, or benchmarks/results/<name>.json) and
  the Markdown summary beside it."""
  payload = {**payload, "git": git_state(), "packages": package_versions(),
             "devices": device_info()}
  path = pathlib.Path(json_path) if json_path else RESULTS_DIR / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  path.with_suffix(".md").write_text(markdown)
  print(markdown)
  print(f"wrote {path} and {path.with_suffix('.md')}")
