"""`mtrec`: list, show and run experiments.

    mtrec list
    mtrec show NAME [--set k=v ...]
    mtrec run NAME [--workdir DIR] [--seeds 0-2 | --seed N]
                   [--only axis=v1,v2 ...] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections import defaultdict

import numpy as np

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.registry import UnknownNameError


def _parse_only(items) -> dict[str, list[str]]:
  only: dict[str, list[str]] = {}
  for item in items or ():
    if "=" not in item:
      raise ValueError(f"--only {item!r}: write axis=value[,value...] "
                       f"(e.g. --only model=mmoe)")
    axis, values = item.split("=", 1)
    only.setdefault(axis.strip(), []).extend(v.strip() for v in values.split(","))
  return only


def _resolve_runs(args):
  exp = experiment_lib.get_experiment(args.name)
  seeds = None
  if getattr(args, "seeds", None):
    seeds = experiment_lib.parse_seeds(args.seeds)
  if getattr(args, "seed", None) is not None:
    seeds = (args.seed,)
  runs = exp.runs(overrides=args.set or (), seeds=seeds,
                  only=_parse_only(getattr(args, "only", None)))
  if not runs:
    raise ValueError(f"no runs of {args.name!r} match the --only/--seeds filters")
  return exp, runs


def cmd_list(args) -> int:
  del args
  rows = experiment_lib.list_experiments()
  width = max(len(n) for n, _ in rows)
  for name, line in rows:
    print(f"{name:<{width}}  {line}")
  return 0


def cmd_show(args) -> int:
  exp, runs = _resolve_runs(args)
  print(exp.description)
  for run in runs:
    print(f"\n# {run.name}  (config hash {config_lib.config_hash(run.config)})")
    print(json.dumps(config_lib.to_dict(run.config), indent=2, sort_keys=True))
  return 0


def _fmt(values: list[float]) -> str:
  vals = [v for v in values if v is not None and not math.isnan(v)]
  if not vals:
    return "-"
  if len(vals) == 1:
    return f"{vals[0]:.4f}"
  return f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}"


def comparison_table(results: list[dict], title: str,
                     metrics: tuple[str, ...] = ()):
  """A rich Table: one row per grid point (seeds pooled); columns `metrics`,
  or by default each task's first test metric and the mean task loss."""
  from rich.table import Table
  axes = [k for k in results[0]["grid"] if k != "seed"]
  # One column per task: its first (primary) metric, e.g. AUC or MSE.
  columns: list[str] = list(metrics)
  for r in results if not metrics else ():
    for key in r.get("metrics", {}):
      task = key.split("/")[1] if key.count("/") == 2 else None
      if (key.startswith("test/") and not key.endswith("/loss") and
          not any(c.split("/")[1] == task for c in columns)):
        columns.append(key)
  if not metrics:
    columns.append("test/loss")  # the mean of the task losses
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for r in results:
    groups[tuple(str(r["grid"][a]) for a in axes)].append(r)
  table = Table(title=title)
  for a in axes:
    table.add_column(a)
  for col in columns:
    label = "mean task loss" if col == "test/loss" else col.removeprefix(
        "test/").removeprefix("report/")
    label = label.replace("/", " ")
    table.add_column(label, justify="right")
  table.add_column("runs", justify="right")
  for key, rs in groups.items():
    done = [r for r in rs if r.get("status") == "done"]
    cells = [_fmt([_value(r, col) for r in done]) for col in columns]
    status = f"{len(done)}/{len(rs)}"
    table.add_row(*key, *cells, status)
  return table


def _value(result: dict, column: str) -> float:
  """A metric of a run, or 'report/<key>' from its experiment report."""
  if column.startswith("report/"):
    return result.get("report", {}).get(column[len("report/"):], math.nan)
  return result["metrics"].get(column, math.nan)


def cmd_run(args) -> int:
  from rich.console import Console
  from mtrec_jax.train import loop
  exp, runs = _resolve_runs(args)
  # Build every run's components first: a bad name or key fails before
  # anything is written.
  components = [loop.Components(r.config) for r in runs]
  root = pathlib.Path(args.workdir) / exp.name
  console = Console(stderr=True)
  results, failed = [], 0
  for i, (run, comp) in enumerate(zip(runs, components)):
    console.print(f"[{i + 1}/{len(runs)}] {exp.name} {run.name}")
    try:
      res = loop.train_and_evaluate(run.config, root / run.name,
                                    experiment=exp.name, grid=run.grid,
                                    progress=not args.no_progress,
                                    components=comp, report=exp.report)
    except Exception as e:  # the sweep carries on; result.json says failed
      failed += 1
      console.print(f"  failed: {type(e).__name__}: {e}")
      res = {"grid": run.grid, "status": "failed", "metrics": {}}
    else:
      if res["status"] != "done":
        console.print(f"  {res['status']}: {res.get('error', '')}")
    results.append(res)
  Console().print(comparison_table(results, f"{exp.name}: test metrics "
                                   f"(mean ± std over seeds)",
                                   exp.table_metrics))
  print(f"results in {root}")
  return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="mtrec", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="list the registered experiments").set_defaults(fn=cmd_list)

  def with_grid_args(sp):
    sp.add_argument("name", help="experiment name (see `mtrec list`)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config key for every run (repeatable)")
    sp.add_argument("--only", action="append", metavar="AXIS=V1,V2",
                    help="keep only runs with these axis values (repeatable)")
    sp.add_argument("--seeds", help="seeds to run, e.g. 0-4 or 0,3")
    sp.add_argument("--seed", type=int, help="run a single seed")

  show = sub.add_parser("show", help="print the resolved configs of a grid")
  with_grid_args(show)
  show.set_defaults(fn=cmd_show)
  run = sub.add_parser("run", help="train every run of an experiment")
  with_grid_args(run)
  run.add_argument("--workdir", default="runs",
                   help="root folder for run outputs (default: ./runs)")
  run.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar")
  run.set_defaults(fn=cmd_run)
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.fn(args)
  except (UnknownNameError, ValueError, TypeError, FileNotFoundError) as e:
    print(f"mtrec: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
