"""The Pareto front against a brute-force check, and the Pareto figure's
highlight / annotate options (a single-task group with one metric) and
the placement of its point names."""
from __future__ import annotations

import itertools

import matplotlib.text
import matplotlib.transforms
import numpy as np
import pytest

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import figures


def _brute(points, directions):
  """Every pair compared: p is on the front unless some q is at least as
  good on both coordinates and better on one."""
  s = np.array([1.0 if d == "max" else -1.0 for d in directions])
  pts = np.asarray(points, dtype=float).reshape(-1, 2) * s
  out = []
  for i, p in enumerate(pts):
    beaten = any(np.all(q >= p) and np.any(q > p)
                 for j, q in enumerate(pts) if j != i)
    if not beaten:
      out.append(i)
  return out


@pytest.mark.parametrize("directions", list(itertools.product(
    ("max", "min"), repeat=2)))
def test_front_matches_brute_force_on_random_points(directions):
  rng = np.random.default_rng(0)
  for n in (1, 2, 5, 30, 200):
    for grid in (None, 4):  # continuous, and few distinct values (ties)
      pts = rng.random((n, 2))
      if grid:
        pts = np.round(pts * grid) / grid
      pts = [tuple(map(float, p)) for p in pts]
      assert figures.pareto_front(pts, directions) == _brute(
          pts, directions), (n, grid)


@pytest.mark.parametrize("points", [
    [],  # nothing
    [(1.0, 1.0)] * 4,  # identical points: none beats another
    [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)],  # a chain: the best alone
    [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0), (3.0, 0.0)],  # all on the front
    [(1.0, 5.0), (1.0, 4.0), (1.0, 5.0), (0.5, 6.0)],  # equal x groups
    [(0.0, 0.0), (0.0, 0.0), (0.0, 1.0)],  # a duplicate beaten
])
def test_front_degenerate_cases(points):
  for d in itertools.product(("max", "min"), repeat=2):
    assert figures.pareto_front(points, d) == _brute(points, d)


def test_front_rejects_a_bad_direction():
  with pytest.raises(ValueError, match="'max' or 'min'"):
    figures.pareto_front([(1.0, 2.0)], ("max", "up"))


def _runs():
  out = []
  rows = {"single_task": (0.08, None), "mean": (0.07, 1.0),
          "pcgrad": (0.075, 0.97), "mgda": (0.06, 0.9), "bad": (0.05, 1.2)}
  for name, (ndcg, rmse) in rows.items():
    for seed in range(2):
      metrics = {"test/next/ndcg@10": ndcg + seed * 1e-3}
      if rmse is not None:
        metrics["test/rating/rmse"] = rmse + seed * 1e-2
      out.append({"grid": {"strategy": name, "seed": seed}, "seed": seed,
                  "status": "done", "tasks": ["next", "rating"],
                  "metrics": metrics})
  out.append({"grid": {"strategy": "gradnorm", "seed": 0}, "seed": 0,
              "status": "failed", "metrics": {}})
  return out


OPTIONS = {"x": "test/next/ndcg@10", "y": "test/rating/rmse"}


def test_highlight_and_annotate_draw(tmp_path):
  paths = figures.pareto(_runs(), tmp_path / "p", **OPTIONS,
                         highlight=("mean", "single_task"), annotate=True)
  for path in paths:
    assert path.stat().st_size > 1000
  # The same figure twice gives the same bytes (one machine).
  again = figures.pareto(_runs(), tmp_path / "q", **OPTIONS,
                         highlight=("mean", "single_task"), annotate=True)
  assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_highlight_names_an_unknown_group(tmp_path):
  with pytest.raises(UnknownNameError, match="'pcgard'.*pcgrad"):
    figures.pareto(_runs(), tmp_path / "p", **OPTIONS, highlight=("pcgard",))


def test_nothing_to_plot():
  assert figures.nothing_to_plot("pareto", _runs(), **OPTIONS) is None
  only_single = [r for r in _runs() if r["grid"]["strategy"] in
                 ("single_task", "gradnorm")]
  why = figures.nothing_to_plot("pareto", only_single, **OPTIONS)
  assert "no done run has both" in why
  failed = [r for r in _runs() if r["status"] != "done"]
  assert figures.nothing_to_plot("pareto", failed, **OPTIONS) == (
      "no run is done yet")
  assert figures.nothing_to_plot("validation", failed) == "no run is done yet"


def test_clip_to_and_axis_limits():
  assert figures.clip_to(1.1, (1.0, 1.2)) == (1.1, 0)
  assert figures.clip_to(1.0, (1.0, 1.2)) == (1.0, 0)  # the edge is inside
  assert figures.clip_to(1.78, (1.0, 1.2)) == (1.2, 1)
  assert figures.clip_to(-3.0, (1.0, 1.2)) == (1.0, -1)
  assert figures.clip_to(5.0, None) == (5.0, 0)
  assert figures.axis_limits(None, "ylim") is None
  assert figures.axis_limits([1, 2], "ylim") == (1.0, 2.0)
  for bad in ((2, 1), (1, 1), (0, float("nan")), (1,), "ab", 3):
    with pytest.raises(ValueError, match="ylim"):
      figures.axis_limits(bad, "ylim")


def test_a_point_beyond_the_limits_is_drawn_at_the_edge_not_dropped(
    tmp_path, monkeypatch):
  """'bad' (RMSE 1.2) lies above ylim: drawn as a triangle at the top edge
  and named with its value; the others keep their error bars."""
  import matplotlib.axes
  drawn, named = [], []
  real_plot, real_annotate = matplotlib.axes.Axes.plot, \
      matplotlib.axes.Axes.annotate
  monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: (
      drawn.append((a, k)), real_plot(self, *a, **k))[1])
  monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                      lambda self, text, *a, **k: (
                          named.append(text),
                          real_annotate(self, text, *a, **k))[1])
  paths = figures.pareto(_runs(), tmp_path / "p", **OPTIONS,
                         highlight=("mean", "single_task"), annotate=True,
                         ylim=(0.85, 1.1))
  assert all(p.stat().st_size > 1000 for p in paths)
  edge = [(a, k) for a, k in drawn if k.get("marker") == "^"]
  assert len(edge) == 1 and edge[0][0][1] == 1.1  # at the top limit
  assert any(t.startswith("bad (y 1.205") for t in named), named
  assert {"mean", "pcgrad", "mgda"} <= set(named)
  with pytest.raises(ValueError, match="xlim"):
    figures.pareto(_runs(), tmp_path / "q", **OPTIONS, xlim=(0.1, 0.0))


def _boxes_overlap(a, b) -> bool:
  return (min(a.x1, b.x1) > max(a.x0, b.x0)
          and min(a.y1, b.y1) > max(a.y0, b.y0))


def test_names_of_a_cluster_cover_no_other_name_or_point():
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(7.2, 5.6), dpi=figures.DPI, layout="constrained")
  ax = fig.add_subplot()
  rng = np.random.default_rng(0)
  # Eight strategies in a small corner, as the better group of ml100k, and
  # two far away: one fixed offset put every name of the corner on another.
  xs = np.concatenate([0.07 + 0.004 * rng.random(8), [0.03, 0.05]])
  ys = np.concatenate([1.09 + 0.01 * rng.random(8), [1.15, 1.2]])
  ax.plot(xs, ys, "o", markersize=4)
  items = [(f"strategy_{i}", x, y, "0.35")
           for i, (x, y) in enumerate(zip(xs, ys))]
  notes = figures.place_labels(ax, items)
  renderer = FigureCanvasAgg(fig).get_renderer()
  boxes = []
  for note in notes:  # the text alone, not its leader line
    note.update_positions(renderer)
    boxes.append(matplotlib.text.Text.get_window_extent(note, renderer))
  frame = ax.get_window_extent(renderer)
  px = ax.transData.transform(np.stack([xs, ys], 1))
  for i, box in enumerate(boxes):
    assert notes[i].get_text() == items[i][0]
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1
    assert frame.y0 <= box.y0 and box.y1 <= frame.y1
    for j, other in enumerate(boxes[:i]):
      assert not _boxes_overlap(box, other), (i, j)
    for j, (mx, my) in enumerate(px):
      if j != i:
        marker = matplotlib.transforms.Bbox.from_extents(
            mx - 4, my - 4, mx + 4, my + 4)
        assert not _boxes_overlap(box, marker), (i, j)
  # A name placed next to its point has no leader line; one moved away has.
  near = [n for n in notes if max(map(abs, n.xyann)) <= 3]
  moved = [n for n in notes if n not in near]
  assert near and moved  # the corner is too crowded for every name to stay
  assert all(n.arrow_patch is None for n in near)
  assert all(n.arrow_patch is not None for n in moved)



def test_names_at_the_corners_and_on_one_spot_stay_apart_and_inside():
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(3.6, 2.8), dpi=figures.DPI, layout="constrained")
  ax = fig.add_subplot()
  ax.set_xlim(0.0, 1.0)
  ax.set_ylim(0.0, 1.0)
  # Two points on one spot, and points in the four corners of the axes:
  # the default offset (up and right) would leave the frame at three.
  xs = [0.5, 0.5, 0.999, 0.999, 0.001, 0.001]
  ys = [0.5, 0.5, 0.999, 0.001, 0.999, 0.001]
  items = [(f"name_{i}", x, y, "k") for i, (x, y) in enumerate(zip(xs, ys))]
  notes = figures.place_labels(ax, items)
  renderer = FigureCanvasAgg(fig).get_renderer()
  frame = ax.get_window_extent(renderer)
  boxes = []
  for note in notes:
    note.update_positions(renderer)
    boxes.append(matplotlib.text.Text.get_window_extent(note, renderer))
  for i, box in enumerate(boxes):
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1, i
    assert frame.y0 <= box.y0 and box.y1 <= frame.y1, i
    for j in range(i):
      assert not _boxes_overlap(box, boxes[j]), (i, j)
  assert figures.place_labels(ax, []) == []
