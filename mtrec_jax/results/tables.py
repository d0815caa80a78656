"""Results tables: grid rows x metric columns, mean ± std over seeds.

`build_table` turns a list of run result dicts (``result.json``, as written
by `mtrec_jax.train.loop`) into a `Table`; `to_markdown` and `to_latex`
render it.  One row per grid point (the chosen axes, seeds pooled), one
column per metric, plus:

* Δm% (Maninis et al., CVPR 2019, "Attentive single-tasking of multiple
  tasks"; the form used by CAGrad, Liu et al., NeurIPS 2021, and Nash-MTL,
  Navon et al., ICML 2022): the average relative change against a baseline
  row, signed so that positive is better, over the columns the baseline row
  has a value for (a single-task row has its own task's only).  See
  `delta_m`.  Up to three baselines, each with its own Δm% column and
  t-test mark (†, ‡, §), e.g. equal weights and single-task.
* mean rank over the metric columns (1 = best; ties share the average rank).
* the best value per column, bold.
* † when a paired two-sided t-test against the baseline row, across seeds,
  gives p < 0.05.  One test per cell, with no multiple-comparison
  correction: a screen for seed noise, not a claim.
* ``done/seeds`` run counts, so a missing, failed or diverged seed shows.
* optionally (``cost=True``) the seconds per training step each run
  measured (`step_seconds`): not a metric, so not in Δm%, ranks or bold.

Everything is deterministic, so a paper can regenerate its tables byte for
byte: rows keep the order in which they first appear in `results`, columns
the order asked for (or the task order), numbers use fixed formats, and
nothing depends on time or on the machine.  Pass results in a fixed order
(e.g. the experiment's grid order, or sorted run folders).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Sequence

from mtrec_jax.registry import UnknownNameError, closest, unknown_name_message
from mtrec_jax.results.status import DONE, MISSING

Direction = Literal["max", "min"]

ALPHA = 0.05
# `baseline="auto"` looks for a row with one of these axis values, in order.
BASELINE_CANDIDATES = ("single_task", "mean")
# The t-test mark of each baseline, in the order they are given.
MARKS = ("†", "‡", "§")
TEX_MARKS = (r"$^\dagger$", r"$^\ddagger$", r"$^\S$")
SPLITS = ("test", "val")


# ----------------------------------------------------------------------------
# The table.


@dataclasses.dataclass(frozen=True)
class Cell:
  """One metric of one row, over the row's done runs with a finite value."""
  by_seed: tuple[tuple[int, float], ...]  # (seed, value), sorted by seed
  mean: float  # NaN when no done run has a finite value
  std: float  # sample std (ddof=1); NaN with fewer than 2 values
  best: bool = False  # the column's best mean (exact ties all best; needs
  # at least two rows with a value)
  p_value: float = math.nan  # paired t-test against the baseline row
  significant: bool = False  # p_value < table.alpha
  # The same test against each further baseline (Table.more_baselines).
  more_significant: tuple[bool, ...] = ()

  @property
  def n(self) -> int:
    return len(self.by_seed)


@dataclasses.dataclass(frozen=True)
class Row:
  key: tuple[str, ...]  # the row axes' values, as text
  cells: tuple[Cell, ...]  # one per table column
  done: int  # runs with status "done"
  total: int  # the table's seeds: a missing run counts here, not in `done`
  not_done: tuple[tuple[int, str], ...]  # (seed, "failed"/"diverged"/"missing")
  delta_m: float = math.nan  # Δm% against the baseline row; NaN if undefined
  mean_rank: float = math.nan  # NaN when a column has no value for this row
  is_baseline: bool = False
  more_delta_m: tuple[float, ...] = ()  # Δm% against each further baseline
  cost: "Cost | None" = None  # measured seconds per step (cost=True)


@dataclasses.dataclass(frozen=True)
class Cost:
  """A row's measured seconds per training step, over its programs: the
  runs of one population share one program (and one time); any other run
  is a program of its own."""
  mean: float
  std: float  # sample std over programs; NaN with one
  programs: int
  members: int  # the most runs one program trained (1: each run alone)


@dataclasses.dataclass(frozen=True)
class Table:
  """What `build_table` found; `to_markdown` / `to_latex` only format it."""
  axes: tuple[str, ...]  # the row axes
  columns: tuple[str, ...]  # metric keys, e.g. "test/income/auc"
  directions: tuple[Direction, ...]  # one per column
  rows: tuple[Row, ...]
  seeds: tuple[int, ...]
  baseline: int | None = None  # index into rows
  alpha: float = ALPHA
  more_baselines: tuple[int, ...] = ()  # further baseline rows, in order
  # The columns each Δm% averages (those its baseline has a value for):
  # the primary baseline's first, then one per further baseline.
  delta_columns: tuple[tuple[int, ...], ...] = ()
  cost: bool = False

  def row(self, *key) -> Row:
    """The row with these axis values (compared as text)."""
    want = tuple(str(k) for k in key)
    for r in self.rows:
      if r.key == want:
        return r
    raise UnknownNameError(f"no row {want}; rows: "
                           f"{'; '.join(self.row_labels())}")

  def cell(self, key, column: str) -> Cell:
    key = key if isinstance(key, tuple) else (key,)
    if column not in self.columns:
      raise UnknownNameError(unknown_name_message("column", column,
                                                  self.columns))
    return self.row(*key).cells[self.columns.index(column)]

  def row_labels(self) -> list[str]:
    return [row_label(self.axes, r.key) for r in self.rows]


def row_label(axes: Sequence[str], key: Sequence[str]) -> str:
  """'model=mmoe, strategy=mean': how errors and footnotes name a row."""
  if not axes:
    return "all runs"
  return ", ".join(f"{a}={v}" for a, v in zip(axes, key))


# ----------------------------------------------------------------------------
# Statistics.


def delta_m(means: Sequence[float], baseline: Sequence[float],
            directions: Sequence[str]) -> float:
  """Δm% of one row against the baseline row (Maninis et al., 2019).

      Δm = 100/T · Σ_t (−1)^{l_t} (M_t − B_t) / B_t

  over the T metric columns, where M_t and B_t are the row's and the
  baseline's seed means and l_t = 1 when lower is better for column t (so
  Δm > 0 means better than the baseline on average).  Every column counts
  once: with several metrics per task, tasks with more columns weigh more,
  as in Navon et al. (2022) on NYUv2.  The denominator is B_t itself (not
  ``|B_t|``), so the metrics should be positive.  NaN when any mean is missing
  or a baseline mean is 0.
  """
  terms = []
  for m, b, d in zip(means, baseline, directions, strict=True):
    if not (math.isfinite(m) and math.isfinite(b)) or b == 0:
      return math.nan
    sign = -1.0 if d == "min" else 1.0
    terms.append(sign * (m - b) / b)
  if not terms:
    return math.nan
  return 100.0 * math.fsum(terms) / len(terms)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std with ddof=1); NaN where undefined (no values, or one).

  Sums are `math.fsum` (correctly rounded), so the numbers, and the tables
  printed from them, do not depend on the order or on the machine's SIMD
  width, as NumPy's pairwise sums can.
  """
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = math.fsum(values) / n
  if n == 1:
    return mean, math.nan
  return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def average_ranks(values: Sequence[float], direction: str) -> list[float]:
  """Rank 1 = best; equal values share the mean of their ranks; NaN unranked."""
  sign = -1.0 if direction == "max" else 1.0
  keys = [sign * v if math.isfinite(v) else math.nan for v in values]
  ranks = []
  for k in keys:
    if math.isnan(k):
      ranks.append(math.nan)
      continue
    better = sum(1 for o in keys if not math.isnan(o) and o < k)
    equal = sum(1 for o in keys if not math.isnan(o) and o == k)
    ranks.append(better + (equal + 1) / 2)
  return ranks


def paired_t_test(a: Sequence[float],
                  b: Sequence[float]) -> tuple[float, float]:
  """(t, two-sided p) of the paired t-test of a − b (as scipy's ttest_rel).

  The p-value is the Student-t tail with n − 1 degrees of freedom,
  ``P(|T| >= |t|) = I_{df/(df+t²)}(df/2, 1/2)``, from the regularized
  incomplete beta function in plain float64.  NaN with fewer than 2 pairs
  or when every difference is 0; p = 0 when the differences are equal but
  not 0.
  """
  a, b = list(map(float, a)), list(map(float, b))
  if len(a) != len(b):
    raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
  d = [x - y for x, y in zip(a, b)]
  n = len(d)
  if n < 2 or not all(map(math.isfinite, d)):
    return math.nan, math.nan
  mean, sd = mean_std(d)
  if sd == 0.0:
    if mean == 0.0:
      return math.nan, math.nan
    return math.copysign(math.inf, mean), 0.0
  t = mean / (sd / math.sqrt(n))
  df = n - 1.0
  return t, _betainc(df / 2.0, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
  """The regularized incomplete beta function I_x(a, b), a, b > 0.

  Evaluates the standard continued fraction
      I_x(a, b) = x^a (1−x)^b / (a B(a, b)) · 1/(1 + d_1/(1 + d_2/(1 + ...)))
      d_{2k+1} = −(a+k)(a+b+k) x / ((a+2k)(a+2k+1)),
      d_{2k}   = k(b−k) x / ((a+2k−1)(a+2k)),
  with the modified Lentz method; it converges fast for x < (a+1)/(a+b+2),
  and otherwise I_x(a, b) = 1 − I_{1−x}(b, a) is used.
  """
  if not (a > 0 and b > 0):
    raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
  if x == 0.0 or x == 1.0:
    return x
  if x > (a + 1.0) / (a + b + 2.0):
    return 1.0 - _betainc(b, a, 1.0 - x)
  log_front = (a * math.log(x) + b * math.log1p(-x) - math.log(a)
               - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
  return math.exp(log_front) * _lentz(a, b, x)


def _lentz(a: float, b: float, x: float, tol: float = 1e-15,
           max_terms: int = 10_000) -> float:
  """1/(1 + d_1/(1 + d_2/(1 + ...))) for `_betainc`, by modified Lentz."""
  tiny = 1e-300

  def coefficient(j: int) -> float:  # the numerator of level j (1-based)
    if j == 1:
      return 1.0
    m = j - 1  # d_m
    k = m // 2
    if m % 2:
      return -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1))
    return k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k))

  f, c, d = tiny, tiny, 0.0
  for j in range(1, max_terms + 1):
    aj = coefficient(j)
    d = 1.0 + aj * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aj / c
    c = c if abs(c) > tiny else tiny
    step = c * d
    f *= step
    if abs(step - 1.0) < tol:
      return f
  raise ArithmeticError(f"betainc({a}, {b}, {x}): continued fraction did "
                        f"not converge in {max_terms} terms")


# ----------------------------------------------------------------------------
# Reading result dicts.


def _seed(result: dict) -> int:
  seed = result.get("grid", {}).get("seed", result.get("seed"))
  if seed is None:
    raise ValueError("a result has no seed (neither grid['seed'] nor 'seed'); "
                     "tables pair runs by seed")
  return int(seed)


def value(result: dict, column: str) -> float:
  """A run's value of `column` (a metric key or 'report/<key>'); NaN if none."""
  if column.startswith("report/"):
    v = (result.get("report") or {}).get(column[len("report/"):])
  else:
    v = (result.get("metrics") or {}).get(column)
  try:
    v = float(v)
  except (TypeError, ValueError):
    return math.nan
  return v if math.isfinite(v) else math.nan


def _available(results) -> list[str]:
  keys = set()
  for r in results:
    keys.update(r.get("metrics") or {})
    keys.update("report/" + k for k in (r.get("report") or {}))
  return sorted(keys)


def task_names(results) -> list[str]:
  """Task names, in the order of each result's 'tasks' list, else its keys."""
  tasks: list[str] = []
  for r in results:
    names = list(r.get("tasks") or ())
    names += [k.split("/")[1] for k in (r.get("metrics") or {})
              if k.count("/") == 2 and k.split("/")[0] in SPLITS]
    for t in names:
      if t not in tasks:
        tasks.append(t)
  return tasks


def registered_metrics() -> dict[str, str]:
  """Metric name -> direction, in registration order (imported lazily: the
  metrics module pulls in JAX, which tables do not otherwise need)."""
  from mtrec_jax.tasks import metrics as metrics_lib
  return {name: metrics_lib.direction(name) for name in metrics_lib.METRICS}


def default_columns(results) -> list[str]:
  """Each task's primary test metric: the first one present in registration
  order of `mtrec_jax.tasks.metrics` (auc before logloss and accuracy, mse
  before rmse), which does not depend on the key order of result.json."""
  available = set(_available(results))
  registered = registered_metrics()
  columns = []
  for task in task_names(results):
    for name in registered:
      if f"test/{task}/{name}" in available:
        columns.append(f"test/{task}/{name}")
        break
  return columns


def resolve_columns(metrics: Sequence[str], results) -> list[str]:
  """Full keys stay; 'task/metric' means the test split; a bare 'metric'
  means that metric of every task, in task order."""
  available = _available(results)
  have = set(available)
  columns: list[str] = []
  for m in metrics:
    if m in have:
      found = [m]
    elif "/" not in m:
      found = [f"test/{t}/{m}" for t in task_names(results)
               if f"test/{t}/{m}" in have]
    elif m.split("/")[0] not in SPLITS + ("report",):
      found = [f"test/{m}"] if f"test/{m}" in have else []
    else:
      found = []
    if not found:
      near = closest(m, available)
      hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
      raise UnknownNameError(
          f"no run has the metric {m!r}.{hint} Write a full key such as "
          f"'test/<task>/<metric>', 'task/metric' (test split), a bare metric "
          f"name (every task), or 'report/<key>'. Available: "
          f"{', '.join(available) or '(none)'}.")
    columns += [c for c in found if c not in columns]
  return columns


def column_direction(column: str, overrides: Mapping[str, str]) -> str:
  if column in overrides:
    d = overrides[column]
  else:
    name = column.split("/")[-1]
    registered = registered_metrics()
    if name in registered:
      d = registered[name]
    elif name.endswith("loss") or name.startswith("loss"):
      d = "min"  # task losses, 'test/loss', 'val/loss_ratio_sum'
    else:
      raise ValueError(
          f"unknown direction for column {column!r}: {name!r} is not a "
          f"registered metric. Pass directions={{{column!r}: 'max'}} (or "
          f"'min') to say whether larger is better.")
  if d not in ("max", "min"):
    raise ValueError(f"direction of {column!r} must be 'max' or 'min', "
                     f"got {d!r}")
  return d


def _as_tuple(x) -> tuple:
  if isinstance(x, str):
    return (x,)
  return tuple(x)


# ----------------------------------------------------------------------------
# Building.


def build_table(results: Sequence[dict], *,
                rows: str | Sequence[str] | None = None,
                metrics: Sequence[str] = (),
                baseline: Mapping[str, Any] | str | None = None,
                directions: Mapping[str, str] | None = None,
                where: Mapping[str, Any] | None = None,
                seeds: Sequence[int] | None = None,
                alpha: float = ALPHA, cost: bool = False) -> Table:
  """A `Table` of `results` (run result dicts), one row per grid point.

  rows: the grid axes that form the rows (default: every axis but 'seed');
    runs that differ only in seed are pooled.  Axes left out must be fixed by
    `where`, or a row would get two runs of one seed (an error).
  metrics: the columns, in order: full keys ('test/income/auc',
    'report/<key>'), 'task/metric' (test split) or a bare metric name (every
    task).  Default: each task's primary test metric (see `default_columns`).
  baseline: the row Δm% and the t-tests compare against: axis values such as
    {'model': 'single_task'} that match exactly one row; 'auto' for the row
    whose value is 'single_task', else 'mean', if there is one; None for no
    Δm% and no tests; or a list of up to three such dicts, each with its own
    Δm% column and t-test mark, the first the primary one (the `baseline`
    of the Table; e.g. [{'strategy': 'mean'}, {'strategy': 'single_task'}]).
    Each Δm% averages the columns its baseline row has a value for.
  directions: 'max'/'min' per column, for columns that are not registered
    metrics (e.g. 'report/...') or to override.
  where: keep runs whose axis value (as text) is the one given, or one of a
    list, e.g. {'model': 'mmoe'}.
  seeds: the expected seeds (runs of other seeds are left out); default:
    every seed of any kept run.  A row lacking one shows it in `done/total`.

  cost: add each row's measured seconds per step (`step_seconds`).

  Only runs with status 'done' give numbers; diverged and failed ones count
  in the row's total, and are listed in `Row.not_done`.
  """
  results = list(results)
  if not results:
    raise ValueError("no results to tabulate (is the run folder empty?)")
  axes_seen: list[str] = []
  for r in results:
    axes_seen += [a for a in r.get("grid", {})
                  if a != "seed" and a not in axes_seen]
  baselines = (list(baseline) if isinstance(baseline, (list, tuple))
               else [baseline])
  if not 1 <= len(baselines) <= len(MARKS) or (
      len(baselines) > 1 and not all(isinstance(b, Mapping)
                                     for b in baselines)):
    raise ValueError(f"baseline must be 'auto', None, {{axis: value}} or a "
                     f"list of 1 to {len(MARKS)} {{axis: value}} dicts, got "
                     f"{baseline!r}")
  named = [*(where or {}), *_as_tuple(rows or ()),
           *(a for b in baselines if isinstance(b, Mapping) for a in b)]
  for a in named:
    if a not in axes_seen and a != "seed":
      near = closest(a, axes_seen)
      hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
      raise UnknownNameError(
          f"unknown axis {a!r}.{hint} Axes of these runs: "
          f"{', '.join(axes_seen) or '(none: seeds only)'}.")
  axes = tuple(axes_seen) if rows is None else _as_tuple(rows)
  if "seed" in axes:
    raise ValueError("'seed' cannot be a row axis: rows pool their seeds")

  kept = select(results, where, seeds)
  done_runs = [r for r in kept if r.get("status") == DONE]
  if not done_runs:
    counts: dict[str, int] = {}
    for r in kept:
      counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    raise ValueError(
        "no run is done, so there is nothing to average (statuses: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + "); see each run's result.json 'error'")
  all_seeds = tuple(sorted(set(map(int, seeds)) if seeds is not None
                           else {_seed(r) for r in kept}))
  groups = _group(kept, axes, axes_seen)

  columns = (resolve_columns(metrics, kept) if metrics
             else default_columns(done_runs))
  if not columns:
    raise ValueError("no test metric found in the done runs; name the "
                     f"columns with metrics=. Available: "
                     f"{', '.join(_available(kept)) or '(none)'}.")
  dirs = [column_direction(c, dict(directions or {})) for c in columns]
  cells = [[_cell(by_seed, c) for c in columns] for by_seed in groups.values()]
  keys = list(groups)
  bases = [_find_baseline(b, axes, keys) for b in baselines]
  base, more = bases[0], tuple(bases[1:])
  if len(set(bases)) < len(bases):
    raise ValueError(f"baselines {baselines} name the same row twice")

  # Best (exact ties all best) and ranks, per column.
  ranks = []
  for j, d in enumerate(dirs):
    means = [row[j].mean for row in cells]
    ranks.append(average_ranks(means, d))
    finite = [m for m in means if math.isfinite(m)]
    best = ((max(finite) if d == "max" else min(finite))
            if len(finite) >= 2 else None)  # a lone value is not "best"
    for row in cells:
      if best is not None and row[j].mean == best:
        row[j] = dataclasses.replace(row[j], best=True)

  # Δm% and paired t-tests against each baseline (seeds shared by both).
  delta = [[math.nan] * len(keys) for _ in bases if _ is not None]
  delta_columns = []
  for k, bi in enumerate(x for x in bases if x is not None):
    have = tuple(j for j, c in enumerate(cells[bi]) if math.isfinite(c.mean))
    delta_columns.append(have)
    for i, row in enumerate(cells):
      delta[k][i] = delta_m([row[j].mean for j in have],
                            [cells[bi][j].mean for j in have],
                            [dirs[j] for j in have]) + 0.0
      for j, (c, bc) in enumerate(zip(row, cells[bi])):
        theirs = dict(bc.by_seed)
        shared = [(v, theirs[s]) for s, v in c.by_seed if s in theirs]
        significant = False
        if i != bi and len(shared) >= 2:
          _, p = paired_t_test([x for x, _ in shared], [y for _, y in shared])
          significant = bool(p < alpha)
          if k == 0:
            row[j] = dataclasses.replace(c, p_value=p,
                                         significant=significant)
        if k > 0:
          row[j] = dataclasses.replace(
              row[j], more_significant=row[j].more_significant + (
                  significant,))
  if base is None:
    delta.insert(0, [math.nan] * len(keys))

  out = []
  for i, (key, by_seed) in enumerate(groups.items()):
    row_ranks = [ranks[j][i] for j in range(len(columns))]
    mean_rank = (math.fsum(row_ranks) / len(row_ranks)
                 if all(math.isfinite(x) for x in row_ranks) else math.nan)
    status = {s: str(by_seed[s].get("status")) if s in by_seed else MISSING
              for s in all_seeds}
    out.append(Row(
        key, tuple(cells[i]),
        done=sum(1 for r in by_seed.values() if r.get("status") == DONE),
        total=len(all_seeds),
        not_done=tuple((s, st) for s, st in status.items() if st != DONE),
        delta_m=delta[0][i], mean_rank=mean_rank, is_baseline=i == base,
        more_delta_m=tuple(d[i] for d in delta[1:]),
        cost=row_cost(by_seed.values()) if cost else None))
  return Table(axes, tuple(columns), tuple(dirs), tuple(out), all_seeds,
               base, alpha, more, tuple(delta_columns), cost)


def step_seconds(result: Mapping) -> float:
  """A done run's measured seconds per training step after the first:
  (wall_time_s - compile_time_s) / (steps - 1), from its result (the time
  to the first step, compile included, is compile_time_s).  The wall time
  also holds the periodic and final evaluation and whatever else the
  machine ran meanwhile, so it is the run's cost as measured under its
  load, not a benchmark.  NaN when a field is missing or steps < 2, and for
  a later attempt (`attempt` > 1): it may have resumed from a checkpoint,
  and then its wall time covers only the steps after it."""
  if result.get("status") != DONE or int(result.get("attempt") or 1) > 1:
    return math.nan
  try:
    wall = float(result["wall_time_s"])
    first = float(result["compile_time_s"])
    steps = int(result["steps"])
  except (KeyError, TypeError, ValueError):
    return math.nan
  if steps < 2 or not (math.isfinite(wall) and math.isfinite(first)):
    return math.nan
  return (wall - first) / (steps - 1)


def row_cost(runs) -> Cost | None:
  """`Cost` of a row's runs: one value per training program (the members
  of a population share theirs: `result['population']['members']`)."""
  programs: dict[tuple, tuple[float, int]] = {}
  for r in runs:
    v = step_seconds(r)
    if math.isnan(v):
      continue
    pop = r.get("population") or {}
    members = tuple(sorted(map(str, pop.get("members") or ())))
    key = ("population",) + members if members else ("run", _seed(r))
    programs.setdefault(key, (v, max(len(members), 1)))
  if not programs:
    return None
  mean, std = mean_std([v for v, _ in programs.values()])
  return Cost(mean, std, len(programs),
              max(n for _, n in programs.values()))


def select(results: Sequence[dict], where: Mapping[str, Any] | None = None,
           seeds: Sequence[int] | None = None) -> list[dict]:
  """The runs whose axis values (as text) match `where` ({axis: value or
  [values]}) and whose seed is in `seeds` (when given); raises ValueError
  when none does. Tables and figures select runs with it."""
  wanted = {a: {str(w) for w in (v if isinstance(v, (list, tuple, set))
                                 else [v])}
            for a, v in (where or {}).items()}
  seed_set = None if seeds is None else set(map(int, seeds))
  kept = [r for r in results
          if all(a in r.get("grid", {}) and str(r["grid"][a]) in ok
                 for a, ok in wanted.items())
          and (seed_set is None or _seed(r) in seed_set)]
  if not kept:
    raise ValueError(f"no result matches where={dict(where or {})} and "
                     f"seeds={sorted(seed_set) if seed_set else 'all'}")
  return kept


def check_where(results: Sequence[dict], where: Mapping[str, Any],
                flag: str = "where") -> None:
  """Raises UnknownNameError, naming the closest one, for a `where` value
  that no run has (`build_table` itself keeps any run that matches one of
  the values, so a typo would silently drop a row)."""
  for axis, wanted in where.items():
    have: list[str] = []
    for r in results:
      v = str(r.get("grid", {}).get(axis))
      if axis in r.get("grid", {}) and v not in have:
        have.append(v)
    wanted = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
    for w in map(str, wanted) if have else ():  # unknown axis: build_table
      if w not in have:
        near = closest(w, have)
        raise UnknownNameError(
            f"{flag} {axis}={w}: no run has {axis} {w!r}."
            + (f" Did you mean {', '.join(map(repr, near))}?" if near else "")
            + f" Values: {', '.join(have)}.")


def _group(runs, axes, all_axes) -> dict[tuple[str, ...], dict[int, dict]]:
  """Row key -> {seed: run}, rows in order of first appearance."""
  groups: dict[tuple[str, ...], dict[int, dict]] = {}
  for r in runs:
    grid = r.get("grid", {})
    missing = [a for a in axes if a not in grid]
    if missing:
      raise ValueError(f"a result (seed {_seed(r)}) has no axis "
                       f"{missing[0]!r} in its grid {grid}; every run needs "
                       f"the row axes {list(axes)}")
    key = tuple(str(grid[a]) for a in axes)
    by_seed = groups.setdefault(key, {})
    seed = _seed(r)
    if seed in by_seed:
      other = by_seed[seed].get("grid", {})
      differ = [a for a in all_axes if a not in axes
                and str(grid.get(a)) != str(other.get(a))]
      fix = (f"they differ in {differ}: add {differ[0]!r} to rows= or pick "
             f"one value with where=" if differ else
             "the same run is listed twice")
      raise ValueError(f"row {row_label(axes, key)!r} has two runs with seed "
                       f"{seed}; {fix}")
    by_seed[seed] = r
  return groups


def _cell(by_seed: Mapping[int, dict], column: str) -> Cell:
  """Mean and sample std of the done runs with a finite value."""
  pairs = tuple((s, value(r, column)) for s, r in sorted(by_seed.items())
                if r.get("status") == DONE)
  pairs = tuple((s, v) for s, v in pairs if not math.isnan(v))
  return Cell(pairs, *mean_std([v for _, v in pairs]))


def _find_baseline(baseline, axes, keys) -> int | None:
  if baseline is None:
    return None
  labels = [row_label(axes, k) for k in keys]
  if isinstance(baseline, str):
    if baseline != "auto":
      raise ValueError(f"baseline must be a dict of axis values, 'auto' or "
                       f"None, got {baseline!r}; e.g. "
                       f"baseline={{'strategy': 'mean'}}")
    for value in BASELINE_CANDIDATES:
      hits = [i for i, k in enumerate(keys) if value in k]
      if len(hits) == 1:
        return hits[0]
      if len(hits) > 1:
        raise ValueError(
            f"baseline='auto': {len(hits)} rows have the value {value!r} "
            f"({'; '.join(labels[i] for i in hits)}); name one with "
            f"baseline={{axis: value, ...}}")
    return None
  want = {a: str(v) for a, v in baseline.items()}
  for a in want:
    if a not in axes:
      raise ValueError(f"baseline axis {a!r} is not a row axis {list(axes)}; "
                       f"add it to rows= or fix it with where=")
  hits = [i for i, k in enumerate(keys)
          if all(k[axes.index(a)] == v for a, v in want.items())]
  if len(hits) == 1:
    return hits[0]
  if not hits:
    raise ValueError(f"no row matches baseline {want}. Rows: "
                     f"{'; '.join(labels)}")
  raise ValueError(f"baseline {want} matches {len(hits)} rows "
                   f"({'; '.join(labels[i] for i in hits)}); give more axes "
                   f"so it matches one")


def parse_baseline(text: str) -> Mapping[str, str] | str | None:
  """The command line's form of `build_table`'s baseline: 'auto', 'none'
  or 'axis=value[,axis=value]'."""
  if text in ("auto", "none"):
    return None if text == "none" else "auto"
  out = {}
  for part in text.split(","):
    if "=" not in part:
      raise ValueError(f"--baseline {text!r}: write auto, none or "
                       f"axis=value[,axis=value] (e.g. --baseline "
                       f"model=single_task)")
    axis, value = part.split("=", 1)
    out[axis.strip()] = value.strip()
  return out


def summary(results: Sequence[dict], metrics: Sequence[str] = (), *,
            digits: int = 4) -> str:
  """The Markdown table `mtrec run` prints after a sweep: every grid point,
  Δm% when `baseline='auto'` finds one row, else none; a line saying why
  when there is no table yet (e.g. no run done)."""
  error: Exception | None = None
  for baseline in ("auto", None):  # auto refuses two 'mean' rows: none
    try:
      return to_markdown(build_table(results, metrics=metrics,
                                     baseline=baseline), digits=digits)
    except (ValueError, UnknownNameError) as e:
      error = e
  return f"(no table: {error})\n"


# ----------------------------------------------------------------------------
# Rendering.


def column_label(column: str) -> str:
  """'test/income/auc' -> 'income auc'; other splits keep their name."""
  if column.startswith("report/"):
    return column[len("report/"):]
  return column.removeprefix("test/").replace("/", " ")


def _num(x: float, digits: int) -> str:
  s = f"{x:.{digits}f}"
  return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.00"


def _signed(x: float) -> str:
  s = _num(x, 2)
  return s if s.startswith("-") or float(s) == 0 else "+" + s


def _display_best(strings: list[str], values: list[float],
                  direction: str) -> list[bool]:
  """Bold every value that *prints* like the best one, so equal-looking
  numbers are never marked differently (e.g. two rows at 0.9465)."""
  finite = [v for v in values if math.isfinite(v)]
  if len(finite) < 2:
    return [False] * len(values)
  best = max(finite) if direction == "max" else min(finite)
  best_s = strings[values.index(best)]
  return [math.isfinite(v) and s == best_s for s, v in zip(strings, values)]


def _base_rows(table: Table) -> list[int]:
  """The baseline rows, the primary one first ([] without one)."""
  return ([] if table.baseline is None
          else [table.baseline, *table.more_baselines])


def _render(table: Table, digits: int, tex: bool,
            list_missing: bool = True) -> tuple[list, list[str]]:
  """Header and body cells (strings), and the footnote lines."""
  up, down = (r"$\uparrow$", r"$\downarrow$") if tex else ("↑", "↓")
  pm = r" $\pm$ " if tex else " ± "
  marks = TEX_MARKS if tex else MARKS
  esc = _tex_escape if tex else _md_escape
  bold = (lambda s: r"\textbf{" + s + "}") if tex else (lambda s: f"**{s}**")
  num = (lambda s: s.replace("-", "$-$")) if tex else (lambda s: s)
  bases = _base_rows(table)
  names = [",".join(table.rows[b].key) or "all" for b in bases]
  dm = r"$\Delta_m$\%" if tex else "Δm%"

  header = [esc(a) for a in table.axes] or ["grid point"]
  header += [f"{esc(column_label(c))} {up if d == 'max' else down}"
             for c, d in zip(table.columns, table.directions)]
  if len(bases) == 1:
    header.append(f"{dm} {up}")
  else:
    header += [f"{dm} vs {esc(n)} {up}" for n in names]
  header.append(f"mean rank {down}")
  header += ["s/step"] if table.cost else []
  header.append("runs")

  body = [[esc(k) for k in r.key] or ["all"] for r in table.rows]
  partial = False
  for j, d in enumerate(table.directions):
    cells = [r.cells[j] for r in table.rows]
    means = [c.mean for c in cells]
    mean_s = [_num(m, digits) if math.isfinite(m) else "" for m in means]
    marked = _display_best(mean_s, means, d)
    for i, (c, r) in enumerate(zip(cells, table.rows)):
      if c.n == 0:
        body[i].append("-")
        continue
      s = num(mean_s[i]) + (pm + _num(c.std, digits) if c.n >= 2 else "")
      s = bold(s) if marked[i] else s
      s += "".join(m for m, sig in zip(marks, (c.significant,
                                               *c.more_significant)) if sig)
      if c.n < r.done:
        s += f" (n={c.n})"
        partial = True
      body[i].append(s)
  extra = []
  for k in range(len(bases)):
    extra.append(([(r.delta_m, *r.more_delta_m)[k] for r in table.rows],
                  "max", _signed))
  extra.append(([r.mean_rank for r in table.rows], "min",
                lambda x: _num(x, 2)))
  for values, d, fmt in extra:
    strings = [fmt(v) if math.isfinite(v) else "" for v in values]
    marked = _display_best(strings, values, d)
    for i, s in enumerate(strings):
      s = num(s) if s else "-"
      body[i].append(bold(s) if marked[i] else s)
  for i, r in enumerate(table.rows):
    if table.cost:
      c = r.cost
      body[i].append("-" if c is None else num(
          f"{c.mean:.3f}" + (pm + f"{c.std:.3f}" if c.programs >= 2 else "")
          + (f" (pop. {c.members})" if c.members > 1 else "")))
    body[i].append(f"{r.done}/{r.total}")

  notes = [f"Mean ± sample std (ddof=1) over seeds {_seed_list(table.seeds)}; "
           f"a single value is one run. runs: done/seeds. Bold: best per "
           f"column."]
  if partial:
    notes.append("(n=k): only k done runs have a finite value.")
  for k, b in enumerate(bases):
    base = f"[{row_label(table.axes, table.rows[b].key)}]"
    cols = (table.delta_columns[k] if k < len(table.delta_columns)
            else tuple(range(len(table.columns))))
    n = len(cols)
    which = ("" if n == len(table.columns) else
             " it has (" + ", ".join(column_label(table.columns[j])
                                     for j in cols) + ")")
    label = "Δm%" if len(bases) == 1 else f"Δm% vs {names[k]}"
    notes.append(
        f"{label}: mean over the {n} metric column"
        f"{'' if n == 1 else 's'}{which} of the "
        f"relative change against the baseline {base}, sign-flipped where "
        f"lower is better (Maninis et al., 2019); higher is better.")
  if bases:
    against = "; ".join(
        f"{MARKS[k]}: against [{row_label(table.axes, table.rows[b].key)}]"
        for k, b in enumerate(bases)) if len(bases) > 1 else (
        f"†: paired two-sided t-test against "
        f"[{row_label(table.axes, table.rows[bases[0]].key)}]")
    notes.append(
        (f"Paired two-sided t-tests across shared seeds, p < "
         f"{table.alpha:g}, {against}." if len(bases) > 1 else
         f"{against} across shared seeds, p < {table.alpha:g}."))
  if table.cost:
    notes.append(
        "s/step: seconds per training step after the first, (wall time - "
        "time to the first step) / (steps - 1), as each run measured it on "
        "its machine under that machine's load (with the periodic and "
        "final evaluation); mean ± std over the row's training programs; "
        "first attempts only (a later one may have resumed from a "
        "checkpoint, its wall time covering only the steps after it). "
        "(pop. k): k runs trained as one population program, whose time "
        "each member reports (not divided by k).")
  missing = [f"{row_label(table.axes, r.key)}: " + ", ".join(
      f"seed {s} {why}" for s, why in r.not_done
      if list_missing or why != MISSING)
             for r in table.rows
             if any(list_missing or why != MISSING for _, why in r.not_done)]
  if missing:
    notes.append("Not done: " + "; ".join(missing) + ".")
  return [header] + body, notes


def _seed_list(seeds) -> str:
  return "{" + ", ".join(map(str, seeds)) + "}"


def _md_escape(s: str) -> str:
  return s.replace("\\", "\\\\").replace("|", "\\|")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$",
        "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(s: str) -> str:
  return "".join(_TEX.get(ch, ch) for ch in s)


def to_markdown(table: Table, *, digits: int = 4,
                list_missing: bool = True) -> str:
  """A GitHub-flavoured Markdown table, padded to align in a terminal, then
  its footnotes.  Means and stds get `digits` decimals, Δm% and mean rank 2,
  s/step 3; a value is bold when it prints like the column's best.
  list_missing=False leaves `missing` runs out of the "Not done" note (a
  partial grid says how many runs are done elsewhere)."""
  lines, notes = _render(table, digits, tex=False, list_missing=list_missing)
  n_label = max(len(table.axes), 1)
  widths = [max(len(row[j]) for row in lines) for j in range(len(lines[0]))]
  widths = [max(w, 3) for w in widths]

  def fmt(row):
    return "| " + " | ".join(
        s.ljust(w) if j < n_label else s.rjust(w)
        for j, (s, w) in enumerate(zip(row, widths))) + " |"

  rule = "|" + "|".join(
      ":" + "-" * (w + 1) if j < n_label else "-" * (w + 1) + ":"
      for j, w in enumerate(widths)) + "|"
  out = [fmt(lines[0]), rule] + [fmt(row) for row in lines[1:]]
  return "\n".join(out + [""] + notes) + "\n"


def to_latex(table: Table, *, digits: int = 4,
             list_missing: bool = True) -> str:
  """A booktabs `tabular` (needs \\usepackage{booktabs}).  The footnotes come
  first as % comments, to copy into the caption: notes inside the tabular
  would set the table's width."""
  lines, notes = _render(table, digits, tex=True, list_missing=list_missing)
  n_label = max(len(table.axes), 1)
  spec = "l" * n_label + "r" * (len(lines[0]) - n_label)
  out = ["% " + n for n in notes]
  out += [r"\begin{tabular}{" + spec + "}", r"\toprule",
          " & ".join(lines[0]) + r" \\", r"\midrule"]
  out += [" & ".join(row) + r" \\" for row in lines[1:]]
  out += [r"\bottomrule", r"\end{tabular}"]
  return "\n".join(out) + "\n"
