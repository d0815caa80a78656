"""Blocks of an experiment whose grid is still running (``partial=True``).

A long grid (e.g. ml100k-strategies, 93 runs over several sessions) goes in
the paper before it is complete, honestly: the region states how many runs
of the experiment's *current* grid (the registry's, not the file's) are
done, leaves out rows with no done run (naming them), and, with no results
file at all, says so in a generated sentence instead of failing.  Nothing is
estimated or filled in: the numbers are those of the done runs.  Once every
run is done, a partial block renders like any other.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from mtrec_jax.results import tables
from mtrec_jax.results.status import DONE, MISSING


@dataclasses.dataclass(frozen=True)
class Progress:
  """How much of an experiment's grid the records hold done."""
  experiment: str
  done: int  # grid runs with a done record
  total: int  # runs of the current grid
  not_done: tuple[tuple[str, int], ...]  # (status, count); 'missing': no run
  axes: tuple[str, ...]  # the grid's axes but 'seed'
  seeds: tuple[int, ...]
  empty_rows: tuple[tuple[str, ...], ...]  # row keys with no done run

  @property
  def complete(self) -> bool:
    return self.done == self.total

  def empty_labels(self) -> list[str]:
    return [tables.row_label(self.axes, k) for k in self.empty_rows]


def _row_key(grid, axes) -> tuple[str, ...]:
  return tuple(str(grid.get(a)) for a in axes)


def _grid(experiment: str, records: Sequence[dict]):
  """[(row key, seed)] of the registered experiment's current grid, and its
  axes; from the records themselves when it is not registered any more."""
  from mtrec_jax import experiment as experiment_lib
  from mtrec_jax.registry import EXPERIMENTS
  experiment_lib.load_experiments()
  if experiment in EXPERIMENTS:
    grids = [dict(r.grid) for r in
             experiment_lib.get_experiment(experiment).runs()]
  else:
    grids = [dict(r.get("grid") or {}) for r in records]
  axes: list[str] = []
  for g in grids:
    axes += [a for a in g if a != "seed" and a not in axes]
  points = []
  for g in grids:
    p = (_row_key(g, axes), int(g.get("seed", 0)))
    if p not in points:
      points.append(p)
  return points, tuple(axes)


def progress(experiment: str, records: Sequence[dict] | None) -> Progress:
  """`Progress` of `records` (None: no results file) against the grid."""
  points, axes = _grid(experiment, records or [])
  status = {}
  for r in records or ():
    g = r.get("grid") or {}
    p = (_row_key(g, axes), int(g.get("seed", r.get("seed", 0))))
    if p in status and status[p] == DONE:
      continue  # a done record of a point wins over an older attempt's
    status[p] = str(r.get("status") or MISSING)
  counts: dict[str, int] = {}
  done_rows = set()
  for p in points:
    st = status.get(p, MISSING)
    if st == DONE:
      done_rows.add(p[0])
    else:
      counts[st] = counts.get(st, 0) + 1
  rows = []
  for key, _ in points:
    if key not in done_rows and key not in rows:
      rows.append(key)
  order = sorted(counts, key=lambda s: (s == MISSING, s))  # missing last
  return Progress(experiment, len(points) - sum(counts.values()),
                  len(points), tuple((s, counts[s]) for s in order), axes,
                  tuple(sorted({s for _, s in points})), tuple(rows))


def _counts(prog: Progress) -> str:
  words = {MISSING: "not run yet"}
  return ", ".join(f"{n} {words.get(s, s)}" for s, n in prog.not_done)


def status_line(prog: Progress) -> str:
  """The bold line over a partial block: runs done of the grid, the rest by
  status, and the rows left out; '' once every run is done."""
  if prog.complete:
    return ""
  line = (f"**Incomplete grid: {prog.done} of {prog.total} runs done** "
          f"({_counts(prog)}).")
  if prog.empty_rows:
    line += (f" Left out, with no done run yet: "
             f"{', '.join(prog.empty_labels())}.")
  return line + "\n\n"


def no_results(prog: Progress, have_file: bool, what: str = "") -> str:
  """The generated sentence of a partial block with nothing to show; `what`
  says why a figure has nothing to plot although runs are done."""
  exp = prog.experiment
  head = f"**Nothing to plot yet** ({what})" if what else "**No results yet**"
  where = (f"{prog.done} of the {prog.total} runs of `{exp}`'s grid are "
           f"done in `results/{exp}.jsonl`" if have_file else
           f"there is no `results/{exp}.jsonl` yet for the {prog.total} "
           f"runs of `{exp}`'s grid")
  return (f"{head}: {where}. They come from `mtrec run {exp}`, then "
          f"`mtrec paper --export {exp}`.\n")


def drop_empty_rows(records: Sequence[dict], prog: Progress) -> list[dict]:
  """The records of rows with at least one done run."""
  empty = set(prog.empty_rows)
  return [r for r in records
          if _row_key(r.get("grid") or {}, prog.axes) not in empty]


def live_baselines(baseline, prog: Progress):
  """`baseline` without the {axis: value} baselines whose row has no done
  run yet (None when none is left); 'auto' and None pass unchanged."""
  if baseline is None or isinstance(baseline, str):
    return baseline
  many = isinstance(baseline, (list, tuple))
  empty = set(prog.empty_rows)

  def live(b) -> bool:
    return not any(all(k[prog.axes.index(a)] == str(v)
                       for a, v in b.items() if a in prog.axes)
                   for k in empty)

  kept = [b for b in (baseline if many else [baseline]) if live(b)]
  if not kept:
    return None
  return tuple(kept) if many else kept[0]
