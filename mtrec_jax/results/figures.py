"""Figures of stored runs: each writes one PNG and one PDF with matplotlib.

Every function takes result dicts (as `Store.results` returns them, or as
`mtrec paper --export` writes them: with ``train_log``, a list of
{step, "weight/<task>", "cos/<a>/<b>", "loss/<task>"}, and for validation
curves ``evals``, the store's eval history) and a base path; it writes
``<base>.png`` and ``<base>.pdf`` and returns both paths.

    weights            task-weight trajectories, one panel per grid point
    cosines            pairwise task-gradient cosines over training
    validation         per-task validation curves, one line per grid point
    pareto             two-task scatter: seed means with std error bars
    metric-vs-axis     a metric against one axis, one line per other axis
                       value (the MMoE-synthetic loss-vs-correlation plot)

Runs are grouped by their grid values (`by`: the axes that form the groups;
default every axis but 'seed'); curves are seed means with a ±1 std band.

Output is as deterministic as matplotlib allows: the figure size depends only
on the panel count, colours follow the group order, and the PNG/PDF carry no
software name or creation date, so the same results give the same files on
one machine. Figures are not compared byte for byte (tables are): fonts and
rasterisation may differ between matplotlib versions.
"""
from __future__ import annotations

import inspect
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

from mtrec_jax.registry import UnknownNameError, closest, unknown_name_message
from mtrec_jax.results import tables
from mtrec_jax.results.status import DONE
PANEL_W, PANEL_H = 3.6, 2.8  # inches per panel
MAX_COLS = 3
DPI = 150
_RC = {"svg.hashsalt": "mtrec", "pdf.fonttype": 42, "font.size": 8,
       "axes.titlesize": 8, "legend.fontsize": 7, "figure.dpi": DPI}
_PNG_META = {"Software": None}
_PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}


# ----------------------------------------------------------------------------
# Selecting and grouping runs.


def _axes_of(results) -> list[str]:
  axes: list[str] = []
  for r in results:
    axes += [a for a in r.get("grid", {}) if a != "seed" and a not in axes]
  return axes


def _check_axes(names, results, what: str) -> None:
  axes = _axes_of(results)
  for a in names:
    if a not in axes:
      near = closest(a, axes)
      hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
      raise UnknownNameError(
          f"{what}: unknown axis {a!r}.{hint} Axes of these runs: "
          f"{', '.join(axes) or '(none: seeds only)'}.")


def _select(results: Sequence[dict], where: Mapping[str, Any] | None,
            what: str) -> list[dict]:
  results = list(results)
  if not results:
    raise ValueError(f"{what}: no results to plot; run the experiment "
                     f"(`mtrec run NAME`) and load its results first")
  _check_axes(list(where or {}), results, what)
  try:
    return tables.select(results, where)
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from None


def _groups(results, by: Sequence[str] | str | None,
            what: str) -> dict[str, list[dict]]:
  """Group label -> runs, in order of first appearance."""
  axes = _axes_of(results) if by is None else (
      [by] if isinstance(by, str) else list(by))
  _check_axes(axes, results, what)
  out: dict[str, list[dict]] = {}
  for r in results:
    grid = r.get("grid", {})
    if len(axes) == 1:
      label = str(grid.get(axes[0]))
    else:
      label = tables.row_label(axes, [str(grid.get(a)) for a in axes])
    out.setdefault(label, []).append(r)
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean, std = tables.mean_std(values)
  return mean, (0.0 if math.isnan(std) else std)


def _finite(v) -> float | None:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def _curve(runs: Sequence[dict], key: str, source: str):
  """(steps, means, stds) of `key` over the runs' records, step by step."""
  by_step: dict[int, list[float]] = {}
  for r in runs:
    for rec in r.get(source) or ():
      v = _finite(rec.get(key))
      if v is not None and "step" in rec:
        by_step.setdefault(int(rec["step"]), []).append(v)
  steps = sorted(by_step)
  stats = [_mean_std(by_step[s]) for s in steps]
  return steps, [m for m, _ in stats], [s for _, s in stats]


def _keys(results, source: str, prefix: str) -> list[str]:
  """Keys with `prefix` in the runs' records, in order of first appearance."""
  keys: list[str] = []
  for r in results:
    for rec in r.get(source) or ():
      keys += [k for k in rec if k.startswith(prefix) and k not in keys]
  return keys


def _resolve_metric(metric: str, results, what: str) -> str:
  """A full metric key from 'test/t/m', 't/m' (test split) or 'report/k'."""
  try:
    found = tables.resolve_columns([metric], results)
  except UnknownNameError as e:
    raise UnknownNameError(f"{what}: {e}") from None
  if len(found) != 1:
    raise ValueError(f"{what}: {metric!r} names {len(found)} columns "
                     f"({', '.join(found)}); name one, e.g. {found[0]!r}")
  return found[0]


def _seed_means(runs, key: str) -> tuple[float, float, int]:
  vals = [tables.value(r, key) for r in runs if r.get("status") == DONE]
  vals = [v for v in vals if not math.isnan(v)]
  mean, std = _mean_std(vals)
  return mean, std, len(vals)


# ----------------------------------------------------------------------------
# Drawing and saving.


def _new_figure(panels: int):
  from matplotlib.figure import Figure
  cols = min(panels, MAX_COLS)
  rows = math.ceil(panels / cols)
  fig = Figure(figsize=(PANEL_W * cols, PANEL_H * rows), dpi=DPI,
               layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
  for ax in axes[panels:]:
    ax.set_visible(False)
  return fig, axes[:panels]


def _colors(n: int) -> list:
  from matplotlib import colormaps
  cmap = colormaps["tab10"]
  return [cmap(i % 10) for i in range(n)]


def _band(ax, steps, means, stds, color, label) -> None:
  ax.plot(steps, means, color=color, label=label, linewidth=1.2)
  if any(stds):
    lo = [m - s for m, s in zip(means, stds)]
    hi = [m + s for m, s in zip(means, stds)]
    ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)


def save(fig, base: str | pathlib.Path) -> list[pathlib.Path]:
  """Writes `base`.png and `base`.pdf without volatile metadata."""
  import matplotlib
  base = pathlib.Path(base)
  base.parent.mkdir(parents=True, exist_ok=True)
  png, pdf = base.with_name(base.name + ".png"), base.with_name(
      base.name + ".pdf")
  with matplotlib.rc_context(_RC):
    fig.savefig(png, format="png", dpi=DPI, metadata=_PNG_META)
    fig.savefig(pdf, format="pdf", metadata=_PDF_META)
  return [png, pdf]


def _render(draw: Callable[[], Any], base) -> list[pathlib.Path]:
  import matplotlib
  with matplotlib.rc_context(_RC):
    fig = draw()
  return save(fig, base)


# ----------------------------------------------------------------------------
# The figures.


def _trajectories(results, base, *, prefix: str, what: str, ylabel: str,
                  empty_hint: str, by, where, title, ylim=None, zero=False):
  runs = _select(results, where, what)
  keys = _keys(runs, "train_log", prefix)
  if not keys:
    raise ValueError(f"{what}: no {prefix!r}... entries in the runs' "
                     f"train_log; {empty_hint}")
  groups = _groups(runs, by, what)

  def draw():
    fig, axes = _new_figure(len(groups))
    colors = _colors(len(keys))
    for ax, (label, grp) in zip(axes, groups.items()):
      for key, color in zip(keys, colors):
        steps, means, stds = _curve(grp, key, "train_log")
        if steps:
          _band(ax, steps, means, stds, color, key[len(prefix):])
      if zero:
        ax.axhline(0.0, color="0.5", linewidth=0.6, linestyle=":")
      if ylim:
        ax.set_ylim(*ylim)
      ax.set_title(label)
      ax.set_xlabel("step")
      ax.set_ylabel(ylabel)
      ax.legend(loc="best")
    if title:
      fig.suptitle(title)
    return fig

  return _render(draw, base)


def reads_train_log(kind: str, options: Mapping[str, Any]) -> bool:
  """Whether a figure of `kind` with `options` draws from the runs'
  train_log (the bulk of an export: `mtrec paper --export` keeps it only
  for the experiments of such figures)."""
  return kind in ("weights", "cosines") or (
      kind == "validation" and options.get("source") == "train_log")


def weights(results: Sequence[dict], base: str | pathlib.Path, *,
            by: Sequence[str] | None = None,
            where: Mapping[str, Any] | None = None,
            title: str = "") -> list[pathlib.Path]:
  """Task weights over training, one panel per group (e.g. per strategy)."""
  return _trajectories(
      results, base, prefix="weight/", what="weights figure",
      ylabel="task weight", by=by, where=where, title=title,
      empty_hint="load the results with their train_log (Store.results or "
                 "`mtrec paper --export` keep it)")


def cosines(results: Sequence[dict], base: str | pathlib.Path, *,
            by: Sequence[str] | None = None,
            where: Mapping[str, Any] | None = None,
            title: str = "") -> list[pathlib.Path]:
  """Pairwise task-gradient cosines over training, one panel per group."""
  return _trajectories(
      results, base, prefix="cos/", what="cosines figure",
      ylabel="gradient cosine", by=by, where=where, title=title,
      ylim=(-1.05, 1.05), zero=True,
      empty_hint="gradient cosines are logged only by strategies that "
                 "compute the task-gradient Gramian (e.g. pcgrad, mgda, "
                 "cagrad); loss-weighting strategies such as 'mean' have none")


def validation(results: Sequence[dict], base: str | pathlib.Path, *,
               metric: str | None = None, source: str = "evals",
               by: Sequence[str] | None = None,
               where: Mapping[str, Any] | None = None,
               title: str = "") -> list[pathlib.Path]:
  """Per-task curves over training: one panel per task, one line per group.

  source 'evals': the validation records (keys val/<task>/<metric>; default
  metric: each task's primary one, as tables choose it); 'train_log': the
  training losses loss/<task> (metric must be None or 'loss').
  """
  what = "validation figure"
  runs = _select(results, where, what)
  if source not in ("evals", "train_log"):
    raise ValueError(f"{what}: source {source!r} is not 'evals' (validation "
                     f"records) or 'train_log' (training losses)")
  tasks = tables.task_names(runs)
  if source == "train_log":
    if metric not in (None, "loss"):
      raise ValueError(f"{what}: the train_log holds only task losses; use "
                       f"metric=None or 'loss' with source='train_log', or "
                       f"source='evals' for {metric!r}")
    keys = [f"loss/{t}" for t in tasks]
  else:
    have = set(_keys(runs, "evals", "val/"))
    if not have:
      raise ValueError(
          f"{what}: the runs have no eval history ('evals' with val/... "
          f"keys). Results read with `mtrec paper` (store or --from) carry "
          f"it; for Store.results add Store.eval_history(run_id). Or use "
          f"source='train_log' for the training losses.")
    registered = list(tables.registered_metrics())
    keys = []
    for t in tasks:
      names = [metric] if metric else registered + ["loss"]
      key = next((f"val/{t}/{m}" for m in names if f"val/{t}/{m}" in have),
                 None)
      if key is None:
        near = closest(f"val/{t}/{metric}", sorted(have))
        raise UnknownNameError(
            f"{what}: no eval record has val/{t}/{metric}."
            + (f" Did you mean {', '.join(map(repr, near))}?" if near else "")
            + f" Available: {', '.join(sorted(have))}.")
      keys.append(key)
  if not keys:
    raise ValueError(f"{what}: the results name no tasks ('tasks' list or "
                     f"test/<task>/<metric> keys)")
  groups = _groups(runs, by, what)

  def draw():
    fig, axes = _new_figure(len(keys))
    colors = _colors(len(groups))
    for ax, key in zip(axes, keys):
      for (label, grp), color in zip(groups.items(), colors):
        steps, means, stds = _curve(grp, key, source)
        if steps:
          _band(ax, steps, means, stds, color, label)
      ax.set_title(key)
      ax.set_xlabel("step")
      ax.set_ylabel(key.split("/")[-1])
      ax.legend(loc="best")
    if title:
      fig.suptitle(title)
    return fig

  return _render(draw, base)


# Label offsets tried in turn, in points: the nearest first, then ever
# farther around the point (with a leader line beyond the first ring).
_LABEL_RADII = (3, 9, 15, 22, 30)
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1),
                     (1, 0), (-1, 0))
_MARKER_PX = 4  # half the side of the box a point's marker is taken to fill


def place_labels(ax, items: Sequence[tuple[str, float, float, Any]], *,
                 fontsize: float = 5) -> list:
  """Names each point (text, x, y, color) beside it without covering another
  name or another point's marker, where the axes leave room.

  Why: a cluster of close strategies (the better group of a Pareto figure)
  printed every name at the same offset, one over the other.  Greedy, in the
  order given: each name takes the first offset of `_LABEL_RADII` x
  `_LABEL_DIRECTIONS` whose box stays inside the axes and overlaps no name
  placed before and no other marker; if none does, the offset with the least
  overlap.  Names away from their point get a thin leader line.  The
  figure's layout is fixed first (the layout engine is turned off), so the
  boxes measured here are the ones saved.  Deterministic: no randomness, no
  dependence on anything but the figure.
  """
  if not items:
    return []
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  fig = ax.figure
  fig.draw_without_rendering()
  fig.set_layout_engine("none")
  renderer = FigureCanvasAgg(fig).get_renderer()
  frame = ax.get_window_extent(renderer)
  pixels = fig.dpi / 72.0
  markers = [ax.transData.transform((x, y)) for _, x, y, _ in items]
  placed: list = []  # the boxes of the names drawn so far
  out = []
  for i, (text, x, y, color) in enumerate(items):
    obstacles = placed + [
        (mx - _MARKER_PX, my - _MARKER_PX, mx + _MARKER_PX, my + _MARKER_PX)
        for j, (mx, my) in enumerate(markers) if j != i]
    best = None  # (cost, radius, style, box)
    for radius in _LABEL_RADII:
      for dx, dy in _LABEL_DIRECTIONS:
        style = dict(xytext=(dx * radius, dy * radius),
                     ha={1: "left", -1: "right", 0: "center"}[dx],
                     va={1: "bottom", -1: "top", 0: "center"}[dy])
        probe = ax.annotate(text, (x, y), textcoords="offset points",
                            fontsize=fontsize, **style)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        box = (extent.x0, extent.y0, extent.x1, extent.y1)
        cost = sum(_overlap(box, o) for o in obstacles)
        if not (frame.x0 <= box[0] and box[2] <= frame.x1
                and frame.y0 <= box[1] and box[3] <= frame.y1):
          cost += (box[2] - box[0]) * (box[3] - box[1])  # (partly) outside
        if best is None or cost < best[0]:
          best = (cost, radius, style, box)
        if cost == 0:
          break
      if best[0] == 0:
        break
    _, radius, style, box = best
    leader = {} if radius == _LABEL_RADII[0] else {"arrowprops": dict(
        arrowstyle="-", color="0.6", linewidth=0.4, shrinkA=0,
        shrinkB=_MARKER_PX / pixels)}
    out.append(ax.annotate(text, (x, y), textcoords="offset points",
                           fontsize=fontsize, color=color, **style,
                           **leader))
    placed.append(box)
  return out


def _overlap(a, b) -> float:
  """The area two (x0, y0, x1, y1) boxes share."""
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  return w * h if w > 0 and h > 0 else 0.0


def _direction_word(column: str) -> str:
  return ("higher is better" if tables.column_direction(column, {}) == "max"
          else "lower is better")


def pareto_front(points: Sequence[tuple[float, float]],
                 directions: tuple[str, str] = ("max", "max")) -> list[int]:
  """Indices (ascending) of the points no other point beats: q dominates p
  when q is at least as good on both coordinates and differs from p
  (equal points do not dominate each other).  directions: 'max' or 'min'
  per coordinate.  One sort and a sweep, O(n log n)."""
  for d in directions:
    if d not in ("max", "min"):
      raise ValueError(f"pareto_front: direction {d!r} must be 'max' or "
                       f"'min'")
  sx, sy = (1.0 if d == "max" else -1.0 for d in directions)
  keyed = sorted(((sx * x, sy * y, i) for i, (x, y) in enumerate(points)),
                 reverse=True)
  front, best_y, k = [], -math.inf, 0
  while k < len(keyed):  # groups of equal x, best x first
    j = k
    while j < len(keyed) and keyed[j][0] == keyed[k][0]:
      j += 1
    top = keyed[k][1]  # the group's best y
    if top > best_y:  # no better-x point reaches it
      front += [i for _, y, i in keyed[k:j] if y == top]
      best_y = top
    k = j
  return sorted(front)


def _pareto_points(results, x, y, by, where):
  """(x key, y key, [(label, mx, sx, my, sy)] of groups with both,
  {label: (mx, sx, my, sy)} of every group, NaN where it has none)."""
  what = "pareto figure"
  runs = _select(results, where, what)
  if x is None or y is None:
    done = [r for r in runs if r.get("status") == DONE]
    default = tables.default_columns(done)
    if len(default) < 2:
      raise ValueError(f"{what}: needs two metrics; the runs have "
                       f"{len(default)} task(s) ({', '.join(default)}). Pass "
                       f"x= and y=, e.g. x='test/loss', y='report/...'")
    x, y = x or default[0], y or default[1]
  x, y = _resolve_metric(x, runs, what), _resolve_metric(y, runs, what)
  groups = _groups(runs, by, what)
  every, points = {}, []
  for label, grp in groups.items():
    mx, sx, nx = _seed_means(grp, x)
    my, sy, ny = _seed_means(grp, y)
    every[label] = (mx, sx, my, sy)
    if nx and ny:
      points.append((label, mx, sx, my, sy))
  return x, y, points, every


def axis_limits(lim, name: str) -> tuple[float, float] | None:
  """`lim` as (low, high) finite floats with low < high; None stays None."""
  if lim is None:
    return None
  try:
    low, high = (float(v) for v in lim)
  except (TypeError, ValueError):
    raise ValueError(f"pareto figure: {name} must be two numbers (low, "
                     f"high), got {lim!r}") from None
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise ValueError(f"pareto figure: {name} must be finite with low < "
                     f"high, got {lim!r}")
  return low, high


def clip_to(value: float, lim: tuple[float, float] | None
            ) -> tuple[float, int]:
  """(where to draw `value` on an axis limited to `lim`, -1/0/+1: below,
  inside or above it)."""
  if lim is None or lim[0] <= value <= lim[1]:
    return value, 0
  return (lim[0], -1) if value < lim[0] else (lim[1], 1)


def pareto(results: Sequence[dict], base: str | pathlib.Path, *,
           x: str | None = None, y: str | None = None,
           by: Sequence[str] | None = None,
           where: Mapping[str, Any] | None = None,
           highlight: Sequence[str] = (), annotate: bool = False,
           xlim: Sequence[float] | None = None,
           ylim: Sequence[float] | None = None,
           title: str = "") -> list[pathlib.Path]:
  """Two metrics, one point per group (seed means, ±1 std bars); the points
  no other point beats on both metrics (`pareto_front`) are joined as the
  Pareto front.

  Default x and y: the primary test metrics of the first two tasks.
  highlight: group labels drawn apart and named in the legend; a
  highlighted group with only one of the two metrics (e.g. a single-task
  run) is a line at its mean, with its ±1 std band.  annotate: name every
  point next to it instead of a legend entry per point (for many groups).
  xlim, ylim: (low, high) of an axis, so that one far point does not
  squeeze the others into a corner; a point beyond them is drawn at the
  edge as a triangle pointing its way, without error bars, and named with
  its value (never dropped).  The front is computed from the true means.
  """
  what = "pareto figure"
  xlim, ylim = axis_limits(xlim, "xlim"), axis_limits(ylim, "ylim")
  x, y, points, every = _pareto_points(results, x, y, by, where)
  if isinstance(highlight, str):
    highlight = (highlight,)
  for h in highlight:
    if h not in every:
      raise UnknownNameError(f"{what}: " + unknown_name_message(
          "highlight group", h, every))
  if not points:
    raise ValueError(f"{what}: no done run has both {x} and {y}")
  dirs = tuple(tables.column_direction(k, {}) for k in (x, y))
  on_front = pareto_front([(p[1], p[3]) for p in points], dirs)
  front = sorted((points[i] for i in on_front), key=lambda p: p[1])

  def draw():
    fig, (ax,) = _new_figure(1)
    if annotate:  # room for the names
      fig.set_size_inches(2 * PANEL_W, 2 * PANEL_H)
    colors = _colors(len(points))
    marked = {h: c for h, c in zip(highlight, _colors(len(highlight) + 3)[3:])}
    names = []  # (label, x, y, color) of the points to name
    for (label, mx, sx, my, sy), color in zip(points, colors):
      if label in marked:
        color = marked[label]
      elif annotate or highlight:
        color = "0.35"
      plain = (annotate or highlight) and label not in marked
      (px, side_x), (py, side_y) = clip_to(mx, xlim), clip_to(my, ylim)
      if side_x or side_y:  # beyond a limit: at the edge, named with value
        marker = ({-1: "<", 1: ">"}[side_x] if side_x
                  else {-1: "v", 1: "^"}[side_y])
        ax.plot(px, py, marker=marker, color=color, linestyle="none",
                markersize=6, clip_on=False, zorder=3)
        shown = ", ".join(f"{k} {m:.4g}" for k, m, side in (
            ("x", mx, side_x), ("y", my, side_y)) if side)
        ax.annotate(f"{label} ({shown})", (px, py),
                    textcoords="offset points", xytext=(-3, -9),
                    ha="right" if side_x == 1 else "left",
                    fontsize=6, color=color)
        continue
      ax.errorbar(mx, my, xerr=sx or None, yerr=sy or None,
                  fmt="s" if label in marked else "o", color=color,
                  ecolor="0.8" if plain else None,  # bars behind points
                  label=label if label in marked or not annotate else None,
                  capsize=2, markersize=5 if label in marked else 4,
                  zorder=3 if label in marked else 2)
      if annotate:
        names.append((label, mx, my, color))
    for h, color in marked.items():  # one metric only: a line and a band
      mx, sx, my, sy = every[h]
      for m, s, line, span in ((mx, sx, ax.axvline, ax.axvspan),
                               (my, sy, ax.axhline, ax.axhspan)):
        if math.isfinite(m) and not (math.isfinite(mx)
                                     and math.isfinite(my)):
          line(m, color=color, linestyle=":", linewidth=1.0, label=h)
          if s:
            span(m - s, m + s, color=color, alpha=0.12, linewidth=0)
    if len(front) > 1:
      ax.plot([clip_to(p[1], xlim)[0] for p in front],
              [clip_to(p[3], ylim)[0] for p in front], color="0.4",
              linestyle="--", linewidth=0.8, label="Pareto front")
    if xlim:
      ax.set_xlim(*xlim)
    if ylim:
      ax.set_ylim(*ylim)
    ax.set_xlabel(f"{x} ({_direction_word(x)})")
    ax.set_ylabel(f"{y} ({_direction_word(y)})")
    ax.legend(loc="best")
    if title:
      ax.set_title(title)
    place_labels(ax, names)  # last: it fixes the layout
    return fig

  return _render(draw, base)


def nothing_to_plot(kind: str, results: Sequence[dict],
                    **options) -> str | None:
  """Why the figure `kind` would have nothing to draw from `results` (no
  done run; for a Pareto figure, no group with both metrics), else None.
  A partial grid's figure region says this instead of drawing."""
  if not any(r.get("status") == DONE for r in results):
    return "no run is done yet"
  if kind == "pareto":
    x, y = options.get("x"), options.get("y")
    try:
      x, y, points, _ = _pareto_points(results, x, y, options.get("by"),
                                       options.get("where"))
    except UnknownNameError:  # no run has one of the metrics yet
      points = []
    if not points:
      return f"no done run has both {x} and {y} yet"
  return None


def metric_vs_axis(results: Sequence[dict], base: str | pathlib.Path, *,
                   x: str = "correlation", lines: str | None = "model",
                   metric: str = "test/loss",
                   where: Mapping[str, Any] | None = None,
                   title: str = "") -> list[pathlib.Path]:
  """A metric (seed mean ± std) against the values of axis `x`, one line per
  value of axis `lines`: e.g. test loss vs task correlation per model, as in
  Ma et al. (KDD 2018), Figure 4. Numeric x values are placed by value,
  others in grid order. Other axes must be fixed with `where`."""
  what = "metric-vs-axis figure"
  runs = _select(results, where, what)
  line_axes = [lines] if lines else []
  _check_axes([x, *line_axes], runs, what)
  if x in line_axes:
    raise ValueError(f"{what}: x and lines are both {x!r}; give lines "
                     f"another axis, or None")
  key = _resolve_metric(metric, runs, what)
  free = [a for a in _axes_of(runs) if a not in (x, *line_axes)]
  for a in free:
    values = {str(r["grid"].get(a)) for r in runs}
    if len(values) > 1:
      raise ValueError(f"{what}: axis {a!r} has several values "
                       f"({', '.join(sorted(values))}); fix one with "
                       f"where={{{a!r}: ...}}")
  xs = []
  for r in runs:
    v = r["grid"].get(x)
    if v not in xs:
      xs.append(v)
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in xs)
  groups = _groups(runs, line_axes, what)

  def draw():
    fig, (ax,) = _new_figure(1)
    for (label, grp), color in zip(groups.items(), _colors(len(groups))):
      px, py, pe = [], [], []
      for i, xv in enumerate(xs):
        m, s, n = _seed_means([r for r in grp if r["grid"].get(x) == xv],
                              key)
        if n:
          px.append(xv if numeric else i)
          py.append(m)
          pe.append(s)
      if px:
        ax.errorbar(px, py, yerr=pe if any(pe) else None, marker="o",
                    color=color, label=label, capsize=2, markersize=4,
                    linewidth=1.2)
    if not numeric:
      ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(f"{key} ({_direction_word(key)})")
    if lines:
      ax.legend(title=lines, loc="best")
    if title:
      ax.set_title(title)
    return fig

  return _render(draw, base)


KINDS: dict[str, Callable[..., list[pathlib.Path]]] = {
    "weights": weights,
    "cosines": cosines,
    "validation": validation,
    "pareto": pareto,
    "metric-vs-axis": metric_vs_axis,
}


def options_of(kind: str) -> list[str]:
  """The keyword options a figure kind takes."""
  if kind not in KINDS:
    raise UnknownNameError(unknown_name_message("figure kind", kind, KINDS))
  params = inspect.signature(KINDS[kind]).parameters.values()
  return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def check_options(kind: str, options: Mapping[str, Any]) -> None:
  """Raises, naming the closest valid option, for an unknown one."""
  valid = options_of(kind)
  for name in options:
    if name not in valid:
      raise UnknownNameError(
          f"figure kind {kind!r} has no option {name!r}."
          + (f" Did you mean {', '.join(map(repr, closest(name, valid)))}?"
             if closest(name, valid) else "")
          + f" Options: {', '.join(valid)}.")


def draw(kind: str, results: Sequence[dict], base: str | pathlib.Path,
         **options) -> list[pathlib.Path]:
  """The figure `kind` (see KINDS) of `results`, written to base.{png,pdf}."""
  check_options(kind, options)
  return KINDS[kind](results, base, **options)
