"""`mtrec`: list, show and run experiments; follow and export their results.

    mtrec list [experiments|strategies|models|datasets]
    mtrec show NAME [--set k=v ...]
    mtrec run NAME [--workdir DIR] [--seeds 0-2 | --seed N]
                   [--only axis=v1,v2 ...] [--set k=v ...]
                   [--shard I/N] [--force] [--resume] [--store PATH]
                   [--population N|auto]
    mtrec status NAME [--only ...] [--seeds ...] [--set k=v ...] [--store PATH]
    mtrec export NAME --format csv|jsonl|parquet [--out PATH] [--store PATH]
    mtrec table NAME [--metric M ...] [--format md|latex] [--rows AXIS,...]
                     [--baseline auto|none|AXIS=V,...] [--where AXIS=V1,V2 ...]
                     [--seeds ...] [--set k=v ...] [--store PATH | --from DIR]
    mtrec paper [--paper D] [--from DIR] [--check] [--export [A,B] [--store P]]
    mtrec store backup OUT | verify [--store PATH]

Every run is recorded in the results store (an SQLite file; default
$MTREC_STORE or ./results/mtrec.db), so `mtrec run` skips runs already done
with the same config and seed, and array jobs (--shard I/N) can share it.
A run keeps checkpoints in its folder; after a crash or a kill, `mtrec run
NAME --resume` continues each unfinished run from its newest usable one
(without --resume, a run starts over and deletes them).

`mtrec paper` regenerates the tables and figures of paper/paper.md from the
committed export paper/results/*.jsonl; `--export` first refreshes that
export from the store; `--check` exits 1 when a table in paper.md differs
from its regeneration.

This module parses arguments and prints; the work is done by
`mtrec_jax.sweep` (run), `mtrec_jax.results.store` (status, export),
`mtrec_jax.results.tables` (table) and `mtrec_jax.results.paper` (paper).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sqlite3
import sys

from mtrec_jax import api, config as config_lib, serve
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import backup
from mtrec_jax.results import store as store_lib
from mtrec_jax.results.status import ORDER


def _grid(args) -> dict:
  """The run-selecting options as `api` keywords."""
  return dict(set=args.set, only=args.only,
              seeds=args.seed if args.seed is not None else args.seeds)


def cmd_list(args) -> int:
  rows = api.registered(args.kind)
  width = max(len(n) for n, _ in rows)
  for name, line in rows:
    print(f"{name:<{width}}  {line}")
  return 0


def cmd_show(args) -> int:
  print(api.experiment(args.name).description)
  for run in api.configs(args.name, **_grid(args)):
    print(f"\n# {run.name}  (config hash {config_lib.config_hash(run.config)})")
    print(json.dumps(config_lib.to_dict(run.config), indent=2, sort_keys=True))
  return 0


def cmd_run(args) -> int:
  out = api.sweep(args.name, **_grid(args), store=args.store,
                  workdir=args.workdir, shard=args.shard, force=args.force,
                  resume=args.resume, progress=not args.no_progress,
                  population=args.population)
  exp = out.experiment
  code = 1 if out.failed else 0
  if not out.primary:
    return code
  from mtrec_jax.results import tables
  print(f"{exp.name}: test metrics (mean ± std over seeds)")
  print(tables.summary(out.results, exp.table_metrics), end="")
  summary = ", ".join(f"{n} {s}" for s, n in out.counts.items())
  skipped = len(out.skipped)
  print(f"results in {out.root}; store {out.store_path}: {summary} "
        f"(of {len(out.runs)} runs)" + (f"; {skipped} skipped" if skipped
                                        else ""))
  return code


def cmd_status(args) -> int:
  if not store_lib.store_exists(args.store):  # a path or PostgreSQL URL
    print(f"(no results store at {args.store} yet)")
  rows = api.status(args.name, **_grid(args), store=args.store)
  width = max(len(r.run_name) for r in rows)
  counts = {s: 0 for s in ORDER}
  for r in rows:
    counts[r.status] += 1
    detail = r.detail.splitlines()[0][:100] if r.detail else ""
    print(f"{r.run_name:<{width}}  seed {r.seed:<3}  {r.status:<8}  "
          f"{detail}".rstrip())
  print(f"{api.stored_name(args.name)}: {len(rows)} runs: " +
        ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s]))
  return 0


def cmd_export(args) -> int:
  # Not checked against the registry: a stored experiment stays exportable
  # after its file is gone; an unknown name gets the store's list of names.
  written, n = api.export(args.name, args.format, out=args.out,
                          store=args.store)
  print(f"wrote {n} runs of {api.stored_name(args.name)} to {written}")
  return 0


def cmd_table(args) -> int:
  print(api.table(args.name, metrics=args.metric, rows=args.rows,
                  baseline=args.baseline, where=args.where, seeds=args.seeds,
                  set=args.set, store=args.store, from_dir=args.from_dir,
                  format=args.format, digits=args.digits), end="")
  return 0


def cmd_paper(args) -> int:
  from mtrec_jax.results import paper
  if args.export is not None and (args.check or args.from_dir is not None):
    raise ValueError("--export writes PAPER/results from the store and then "
                     "regenerates the paper from it; it goes without --check "
                     "and --from (run `mtrec paper --check` afterwards)")
  if args.store is not None and args.export is None:
    raise ValueError("--store is read only by --export (the paper itself is "
                     "generated from PAPER/results/*.jsonl); add --export")
  paper_dir = pathlib.Path(args.paper)
  if args.export is not None:
    for f in paper.export_from_store(paper_dir, args.store, args.export):
      print(f"exported {f}")
  md = paper_dir / paper.PAPER_FILE
  if args.check:
    diffs = paper.check(paper_dir, args.from_dir)
    total = len(paper.validate(paper_dir))
    for block_id, diff in diffs:
      print(f"block {block_id!r} differs from its regeneration:\n{diff}\n")
    if diffs:
      print(f"{len(diffs)} of {total} generated regions of {md} differ: "
            f"{', '.join(b for b, _ in diffs)}; run `mtrec paper` to "
            f"regenerate them (or fix the results they come from)")
      return 1
    print(f"{md}: all {total} generated regions match their regeneration "
          f"(figures are not compared)")
    return 0
  gen, figures = paper.write(paper_dir, args.from_dir)
  changed = (f"{len(gen.changed)} changed: {', '.join(gen.changed)}"
             if gen.changed else "none changed")
  print(f"{gen.path}: {len(gen.bodies)} generated regions ({changed})")
  for f in figures:
    print(f"wrote {f}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="mtrec", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  def command(name, fn, help, *, grid=False, store=False):
    sp = sub.add_parser(name, help=help)
    sp.set_defaults(fn=fn)
    if grid or name in ("export", "table"):
      sp.add_argument("name", help="experiment name (see `mtrec list`)")
    if grid:
      sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a config key for every run (repeatable)")
      sp.add_argument("--only", action="append", metavar="AXIS=V1,V2",
                      help="keep only runs with these axis values "
                           "(repeatable)")
      sp.add_argument("--seeds", help="seeds to run, e.g. 0-4 or 0,3")
      sp.add_argument("--seed", type=int, help="run a single seed")
    if store:
      sp.add_argument("--store", type=store_lib.store_arg,
                      default=store_lib.default_store_path(),
                      help="results store file (default: $MTREC_STORE or "
                           "./results/mtrec.db)")
    return sp

  command("list", cmd_list, "list the registered experiments (or "
          "strategies, models, datasets)").add_argument(
      "kind", nargs="?", default="experiments", choices=api.KINDS)
  command("show", cmd_show, "print the resolved configs of a grid", grid=True)
  run = command("run", cmd_run, "train every run of an experiment",
                grid=True, store=True)
  run.add_argument("--workdir", default="runs",
                   help="root folder for run outputs (default: ./runs)")
  run.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar")
  run.add_argument("--shard", metavar="I/N",
                   help="run only grid entries j with j %% N == I (0 <= I < "
                        "N), e.g. one cluster array job task each")
  run.add_argument("--force", action="store_true", help="run runs done again")
  run.add_argument("--resume", action="store_true", help="continue unfinished "
                   "runs from their newest usable checkpoint (none: fresh)")
  run.add_argument("--population", metavar="N|auto", help="train up to N runs "
                   "differing only in seed, lr, float strategy.hparams at once")
  command("status", cmd_status, "done/running/failed/missing for each run of "
          "a grid, from the results store", grid=True, store=True)
  export = command("export", cmd_export, "write an experiment's stored "
                   "results to a csv, jsonl or parquet file", store=True)
  export.add_argument("--format", required=True,
                      choices=store_lib.EXPORT_FORMATS,
                      help="csv/parquet: one row per run; jsonl: one full "
                           "result per line")
  export.add_argument("--out", metavar="PATH",
                      help="output file (default: results/NAME.FORMAT)")

  table = command("table", cmd_table, "an experiment's results table: rows "
                  "x metrics, mean ± std over seeds, Δm%%, ranks", store=True)
  table.add_argument("--metric", action="extend", nargs="+", metavar="M",
                     help="columns: 'test/<task>/<metric>', 'task/metric', a "
                          "bare metric (every task) or 'report/<key>' "
                          "(default: the experiment's table_metrics, else "
                          "each task's primary metric)")
  table.add_argument("--format", choices=("md", "latex"), default="md",
                     help="Markdown (default) or a LaTeX booktabs tabular")
  table.add_argument("--rows", metavar="AXIS,...",
                     help="the axes that form the rows (default: all)")
  table.add_argument("--baseline", default="auto",
                     metavar="auto|none|AXIS=V,...",
                     help="the row for Δm%% and the paired t-tests; auto: the "
                          "row with value single_task, else mean")
  table.add_argument("--where", action="append", metavar="AXIS=V1,V2",
                     help="keep runs with these axis values (repeatable)")
  table.add_argument("--seeds", help="the seeds of the grid (default: the "
                     "experiment's), e.g. 0-4")
  table.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="the overrides the runs were made with (they pick "
                          "the runs' config hashes in the store)")
  table.add_argument("--digits", type=int, default=4,
                     help="decimals of means and stds (default 4)")
  table.add_argument("--from", dest="from_dir", metavar="DIR",
                     help="read DIR/NAME.jsonl (`mtrec paper --export` or "
                          "`mtrec export --format jsonl`) instead of the "
                          "store")

  backup.add_parser(command)  # mtrec store backup OUT | verify
  paper = command("paper", cmd_paper, "regenerate the tables and figures of "
                  "paper/paper.md (or check them)")
  paper.add_argument("--paper", default="paper", metavar="DIR",
                     help="the paper folder: paper.md, paper_spec.py, "
                          "results/, figures/ (default: ./paper)")
  paper.add_argument("--from", dest="from_dir", metavar="DIR",
                     help="read results from DIR/<experiment>.jsonl "
                          "(default: PAPER/results)")
  paper.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 when a generated region of "
                          "paper.md differs from its regeneration")
  paper.add_argument("--export", nargs="?", const="", metavar="NAMES",
                     help="first write PAPER/results/<name>.jsonl of each "
                          "experiment of the paper (or of NAMES: a,b), from "
                          "the store")
  paper.add_argument("--store", type=store_lib.store_arg, default=None,
                     help="the results store --export reads (default: "
                          "$MTREC_STORE or ./results/mtrec.db)")
  serve.add_commands(command)  # recommend, export-model: serve/commands.py
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.fn(args)
  # ImportError: an optional package is missing (pyarrow for parquet);
  # OSError: a path that cannot be read or written (a directory, no access).
  except (UnknownNameError, ValueError, TypeError, OSError,
          store_lib.StoreLockedError, ImportError) as e:
    print(f"mtrec: error: {e}", file=sys.stderr)
    return 2
  except sqlite3.DatabaseError as e:
    store = getattr(args, "store", None)
    print(f"mtrec: error: results store {store}: {e}; check the file, or "
          f"pass another --store PATH (or set $MTREC_STORE)", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
