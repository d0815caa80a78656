"""`mtrec`: list, show and run experiments; follow and export their results.

    mtrec list
    mtrec show NAME [--set k=v ...]
    mtrec run NAME [--workdir DIR] [--seeds 0-2 | --seed N]
                   [--only axis=v1,v2 ...] [--set k=v ...]
                   [--shard I/N] [--force] [--resume] [--store PATH]
    mtrec status NAME [--only ...] [--seeds ...] [--set k=v ...] [--store PATH]
    mtrec export NAME --format csv|jsonl|parquet [--out PATH] [--store PATH]
    mtrec table NAME [--metric M ...] [--format md|latex] [--rows AXIS,...]
                     [--baseline auto|none|AXIS=V,...] [--where AXIS=V1,V2 ...]
                     [--seeds ...] [--set k=v ...] [--store PATH | --from DIR]
    mtrec paper [--paper DIR] [--from DIR] [--check] [--export [--store PATH]]

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
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import re
import sqlite3
import sys
import threading
import time
import warnings
from collections import defaultdict

import numpy as np

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import store as store_lib

# How often a training process refreshes its run's heartbeat in the store;
# well under Store.stale_after_s, after which a silent run counts as abandoned.
HEARTBEAT_EVERY_S = 60.0


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


def _parse_shard(text: str | None) -> tuple[int, int]:
  """'2/8' -> (2, 8): this process runs grid entries j with j % 8 == 2."""
  if text is None:
    return 0, 1
  m = re.fullmatch(r"\s*([+-]?\d+)\s*/\s*([+-]?\d+)\s*", text)
  if not m:
    raise ValueError(f"--shard {text!r}: write I/N, this job's shard index "
                     f"and the number of shards, e.g. --shard 0/4 ... "
                     f"--shard 3/4")
  i, n = int(m.group(1)), int(m.group(2))
  if n < 1:
    raise ValueError(f"--shard {text!r}: the number of shards N must be at "
                     f"least 1")
  if not 0 <= i < n:
    raise ValueError(f"--shard {text!r}: the shard index must satisfy "
                     f"0 <= I < N, so 0..{n - 1} here (shards count from 0, "
                     f"like an array job's task id with --array=0-{n - 1})")
  return i, n


def _run_key(run) -> tuple[str, int]:
  """(config hash, seed): how the store identifies a run."""
  return config_lib.config_hash(run.config), int(run.grid["seed"])


def _read_evals(workdir: pathlib.Path) -> list[dict]:
  """The eval records of `workdir/metrics.jsonl` (a torn last line skipped)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(rec, dict) and "step" in rec:
      records.append(rec)
  return records


def _failed_result(workdir: pathlib.Path, since: float,
                   config_hash: str) -> dict | None:
  """The failed result.json that train_and_evaluate wrote before re-raising,
  or None when there is none from this attempt (an older file is ignored)."""
  from mtrec_jax.results import run_files
  path = workdir / "result.json"
  try:
    if path.stat().st_mtime < since - 1.0:
      return None
    res = run_files.read_json(path)
  except (OSError, ValueError):
    return None
  if (not isinstance(res, dict) or res.get("status") != store_lib.FAILED or
      res.get("config_hash", config_hash) != config_hash):
    return None
  return res


class _Heartbeat:
  """Refreshes a claimed run's heartbeat while it trains, from a thread with
  its own connection, so that a run longer than the store's `stale_after_s`
  is not taken for abandoned and claimed by another shard. Best effort: a
  failed heartbeat never stops the training."""

  def __init__(self, path: pathlib.Path, run_id: int,
               every_s: float | None = None):
    self.path, self.run_id = path, run_id
    self.every_s = HEARTBEAT_EVERY_S if every_s is None else every_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True,
                                    name=f"mtrec-heartbeat-{run_id}")

  def _loop(self) -> None:
    store = None
    try:
      while not self._stop.wait(self.every_s):
        try:
          store = store or store_lib.Store(self.path, lock_timeout_s=10.0)
          store.heartbeat(self.run_id)
        except (sqlite3.Error, ValueError):
          pass  # retried at the next beat
    finally:
      if store is not None:
        store.close()

  def __enter__(self) -> _Heartbeat:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join(timeout=15.0)


def _skip_reason(store, exp_name: str, run, key) -> str:
  """Why `claim` returned None for a run, in words."""
  st = store.status(exp_name, [(run.name, *key)])[0]
  if st.status in store_lib.FINAL:
    return (f"skipped: already {st.status} in the store (run id {st.run_id}, "
            f"attempt {st.attempts}); --force runs it again")
  if st.status == store_lib.RUNNING:
    return f"skipped: another process is running it ({st.detail})"
  return f"skipped: the store did not hand it out ({st.status})"


def _store_result(store, console, run_id: int, res: dict,
                  evals: list[dict]) -> bool:
  """finish(); False (and the attempt marked failed) when it cannot be stored."""
  try:
    store.finish(run_id, res, evals=evals)
    return True
  except (TypeError, ValueError) as e:
    console.print(f"  could not store the result: {e}")
    store.fail(run_id, f"storing the result failed: {e}")
    return False


class _FollowerStore:
  """What a process other than process 0 holds in a multi-process run:
  process 0 alone claims runs and stores results (one SQLite writer, even
  on a shared file system); the others train the runs it claimed."""
  path = None

  def finish(self, *args, **kwargs) -> None:
    pass

  def fail(self, *args, **kwargs) -> None:
    pass

  def __enter__(self) -> "_FollowerStore":
    return self

  def __exit__(self, *exc) -> None:
    pass


def _agree_on_claim(run_id):
  """Process 0's claim (a run id, or None), seen by every process."""
  import jax
  import numpy as np
  if jax.process_count() == 1:
    return run_id
  from jax.experimental import multihost_utils
  value = multihost_utils.broadcast_one_to_all(
      np.int64(-1 if run_id is None else run_id))
  return None if int(value) < 0 else int(value)


def _train_one(store, console, exp, run, comp, workdir: pathlib.Path,
               run_id: int, progress: bool,
               resume: bool = False) -> tuple[dict, bool]:
  """Trains one claimed run and stores its outcome: (result, ok)."""
  from mtrec_jax.train import checkpoints, loop
  key = _run_key(run)
  started = time.time()

  def log(message: str) -> None:
    console.print("  " + message, markup=False, highlight=False,
                  soft_wrap=True)

  def show(message, category, *args, **kwargs):
    if issubclass(category, checkpoints.CheckpointWarning):
      log(f"warning: {message}")
    else:
      shown(message, category, *args, **kwargs)

  shown = warnings.showwarning
  try:
    beat = (_Heartbeat(store.path, run_id) if store.path is not None
            else contextlib.nullcontext())
    with beat, warnings.catch_warnings():
      # Checkpoint trouble (a damaged one skipped) is said in the run's
      # output, every time, rather than once as a Python warning.
      warnings.simplefilter("always", checkpoints.CheckpointWarning)
      warnings.showwarning = show
      res = loop.train_and_evaluate(run.config, workdir,
                                    experiment=exp.name, grid=run.grid,
                                    progress=progress, components=comp,
                                    report=exp.report, resume=resume,
                                    log=log)
  except KeyboardInterrupt:
    store.fail(run_id, "interrupted (KeyboardInterrupt)")
    raise
  except Exception as e:  # the sweep carries on; the store says failed
    console.print(f"  failed: {type(e).__name__}: {e}")
    res = _failed_result(workdir, started, key[0])
    if res is None:
      store.fail(run_id, f"{type(e).__name__}: {e}")
    else:
      _store_result(store, console, run_id, res, _read_evals(workdir))
    return {"grid": run.grid, "status": "failed", "metrics": {}}, False
  if res["status"] != "done":
    console.print(f"  {res['status']}: {res.get('error', '')}")
  ok = _store_result(store, console, run_id, res, _read_evals(workdir))
  return res, ok


def _metric_order(components) -> dict[str, int]:
  """Metric keys in evaluation order (each task's primary metric first).

  The store returns results with their keys sorted by name; the table's
  default columns are each task's first metric, so the order is restored.
  """
  order: dict[str, int] = {}
  for comp in components:
    for split in ("val", "test"):
      for t in comp.tasks:
        for m in (*t.metric_names, "loss"):
          order.setdefault(f"{split}/{t.name}/{m}", len(order))
  return order


def _grid_results(store, exp_name: str, runs, ran: dict,
                  order: dict[str, int]) -> list[dict]:
  """One result per run of the grid: stored, else from this process, else a
  'missing' placeholder, so the table shows the whole grid's progress."""
  try:
    stored = {(r.get("config_hash"), r.get("seed")): r
              for r in store.results(exp_name)}
  except store_lib.StoreLockedError:
    stored = {}
  out = []
  for run in runs:
    key = _run_key(run)
    res = stored.get(key) or ran.get(key) or {"status": store_lib.MISSING,
                                              "metrics": {}}
    metrics = sorted((res.get("metrics") or {}).items(),
                     key=lambda kv: order.get(kv[0], len(order)))
    out.append({**res, "grid": run.grid, "metrics": dict(metrics)})
  return out


def cmd_run(args) -> int:
  from rich.console import Console
  from mtrec_jax.results import provenance as provenance_lib
  from mtrec_jax.train import loop, parallel
  shard, num_shards = _parse_shard(args.shard)
  # On a cluster (SLURM, MPI, TPU pod), join the other processes first.
  parallel.initialize_distributed()
  exp, runs = _resolve_runs(args)
  mine = [r for j, r in enumerate(runs) if j % num_shards == shard]
  # Build this shard's components first: a bad name or key fails before
  # anything (run folders, the store) is written.
  components = [loop.Components(r.config) for r in mine]
  order = _metric_order(components or [loop.Components(runs[0].config)])
  root = pathlib.Path(args.workdir) / exp.name
  console = Console(stderr=True)
  if num_shards > 1:
    console.print(f"shard {shard}/{num_shards}: {len(mine)} of the "
                  f"{len(runs)} runs of {exp.name}")
  prov = provenance_lib.provenance()
  ran: dict[tuple, dict] = {}
  failed = skipped = 0
  import jax
  primary = jax.process_index() == 0
  if not primary:
    console.quiet = True  # process 0 reports for every process
  with (store_lib.Store(args.store) if primary else _FollowerStore()) as store:
    for i, (run, comp) in enumerate(zip(mine, components)):
      console.print(f"[{i + 1}/{len(mine)}] {exp.name} {run.name}")
      key = _run_key(run)
      run_id = store.claim(exp.name, run.name, run.grid,
                           config_lib.to_dict(run.config), key[0], key[1],
                           prov, force=args.force) if primary else None
      run_id = _agree_on_claim(run_id)
      if run_id is None:
        skipped += 1
        if primary:
          console.print("  " + _skip_reason(store, exp.name, run, key))
        continue
      res, ok = _train_one(store, console, exp, run, comp, root / run.name,
                           run_id, not args.no_progress, args.resume)
      failed += not ok
      ran[key] = res
    if not primary:
      return 1 if failed else 0
    results = _grid_results(store, exp.name, runs, ran, order)
    counts = defaultdict(int)
    for r in results:
      counts[r["status"]] += 1
  Console().print(comparison_table(results, f"{exp.name}: test metrics "
                                   f"(mean ± std over seeds)",
                                   exp.table_metrics))
  summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
  print(f"results in {root}; store {store.path}: {summary} "
        f"(of {len(runs)} runs)" + (f"; {skipped} skipped" if skipped else ""))
  return 1 if failed else 0


def cmd_status(args) -> int:
  exp, runs = _resolve_runs(args)
  path = pathlib.Path(args.store)
  expected = [(r.name, *_run_key(r)) for r in runs]
  if path.exists():
    with store_lib.Store(path) as store:
      rows = store.status(exp.name, expected)
  else:  # don't create an empty store just to read it
    print(f"(no results store at {path} yet)")
    rows = [store_lib.RunStatus(n, h, s, store_lib.MISSING, None, 0, "")
            for n, h, s in expected]
  width = max(len(r.run_name) for r in rows)
  counts: dict[str, int] = defaultdict(int)
  for r in rows:
    counts[r.status] += 1
    detail = r.detail.splitlines()[0][:100] if r.detail else ""
    print(f"{r.run_name:<{width}}  seed {r.seed:<3}  {r.status:<8}  "
          f"{detail}".rstrip())
  order = ("done", "running", "diverged", "failed", "missing")
  print(f"{exp.name}: {len(rows)} runs: " +
        ", ".join(f"{counts[s]} {s}" for s in order if counts[s]))
  return 0


def cmd_export(args) -> int:
  # Not checked against the registry: a stored experiment stays exportable
  # after its file is gone; an unknown name gets the store's list of names.
  name, path = args.name, pathlib.Path(args.store)
  if not path.exists():
    raise FileNotFoundError(
        f"no results store at {path}; run `mtrec run {name}` first, or "
        f"pass --store PATH (or set $MTREC_STORE) to the store to read")
  out = pathlib.Path(args.out or pathlib.Path("results",
                                              f"{name}.{args.format}"))
  with store_lib.Store(path) as store:
    written = store.export(name, args.format, out)
    n = len(store.results(name))
  print(f"wrote {n} runs of {name} to {written}")
  return 0


def _parse_axis_values(items, flag: str) -> dict[str, list[str]]:
  """['model=mmoe,ple', ...] -> {'model': ['mmoe', 'ple']}."""
  out: dict[str, list[str]] = {}
  for item in items or ():
    if "=" not in item:
      raise ValueError(f"{flag} {item!r}: write axis=value[,value...] "
                       f"(e.g. {flag} model=mmoe)")
    axis, values = item.split("=", 1)
    out.setdefault(axis.strip(), []).extend(
        v.strip() for v in values.split(","))
  return out


def _parse_baseline(text: str):
  """'auto' | 'none' | 'axis=value[,axis=value]' -> build_table's baseline."""
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


def _table_results(args) -> tuple[list[dict], tuple[str, ...]]:
  """(results, default metrics) for `mtrec table`: the grid's runs from the
  store, or the records of --from DIR/NAME.jsonl as they are."""
  from mtrec_jax.results import paper as paper_lib
  if args.from_dir is not None:
    if args.set:
      raise ValueError("--set selects runs in the store; with --from DIR the "
                       "file's runs are tabulated as they are (drop --set)")
    return (paper_lib.read_results(args.from_dir, args.name),
            paper_lib.default_metrics(args.name))
  exp = experiment_lib.get_experiment(args.name)
  seeds = experiment_lib.parse_seeds(args.seeds) if args.seeds else None
  runs = exp.runs(overrides=args.set or (), seeds=seeds)
  path = pathlib.Path(args.store)
  if not path.exists():
    raise FileNotFoundError(
        f"no results store at {path}; run `mtrec run {args.name}` first, or "
        f"pass --store PATH (or set $MTREC_STORE), or --from DIR for an "
        f"exported jsonl")
  with store_lib.Store(path) as store:
    results = paper_lib.store_results(store, exp.name, runs)
    other = len(store.results(exp.name))
  if all(r["status"] == store_lib.MISSING for r in results):
    hint = (f"; it holds {other} runs of {args.name!r} with other configs: "
            f"pass the --set overrides (and --seeds) they were run with"
            if other else f"; run `mtrec run {args.name}` first")
    raise ValueError(f"results store {path} has none of the {len(runs)} "
                     f"runs of {args.name!r}'s current grid{hint}")
  return results, tuple(exp.table_metrics)


def _check_where(results: list[dict], where: dict[str, list[str]]) -> None:
  """Names the closest value for a --where value no run has."""
  from mtrec_jax.registry import closest
  for axis, wanted in where.items():
    have = []
    for r in results:
      v = str(r.get("grid", {}).get(axis))
      if axis in r.get("grid", {}) and v not in have:
        have.append(v)
    for w in wanted if have else ():  # an unknown axis: build_table says so
      if w not in have:
        near = closest(w, have)
        raise UnknownNameError(
            f"--where {axis}={w}: no run has {axis} {w!r}."
            + (f" Did you mean {', '.join(map(repr, near))}?" if near else "")
            + f" Values: {', '.join(have)}.")


def cmd_table(args) -> int:
  from mtrec_jax.results import tables as tables_lib
  results, default_metrics = _table_results(args)
  rows = None
  if args.rows is not None:
    rows = tuple(a.strip() for a in args.rows.split(",") if a.strip())
  seeds = (experiment_lib.parse_seeds(args.seeds)
           if args.seeds and args.from_dir is not None else None)
  where = _parse_axis_values(args.where, "--where")
  _check_where(results, where)
  table = tables_lib.build_table(
      results, rows=rows, metrics=args.metric or default_metrics,
      baseline=_parse_baseline(args.baseline),
      where=where, seeds=seeds)
  render = tables_lib.to_latex if args.format == "latex" else (
      tables_lib.to_markdown)
  print(render(table, digits=args.digits), end="")
  return 0


def cmd_paper(args) -> int:
  from mtrec_jax.results import paper as paper_lib
  if args.export and (args.check or args.from_dir is not None):
    raise ValueError("--export writes PAPER/results from the store and then "
                     "regenerates the paper from it; it goes without --check "
                     "and --from (run `mtrec paper --check` afterwards)")
  if args.store is not None and not args.export:
    raise ValueError("--store is read only by --export (the paper itself is "
                     "generated from PAPER/results/*.jsonl); add --export")
  paper_dir = pathlib.Path(args.paper)
  if args.export:
    blocks = paper_lib.validate(paper_dir)
    path = pathlib.Path(args.store or store_lib.default_store_path())
    if not path.exists():
      raise FileNotFoundError(
          f"no results store at {path}; run the experiments the paper uses "
          f"({', '.join(paper_lib.experiments_of(blocks))}) with `mtrec run "
          f"NAME`, or pass --store PATH (or set $MTREC_STORE)")
    with store_lib.Store(path) as store:
      for f in paper_lib.export(store, paper_lib.experiments_of(blocks),
                                paper_dir / paper_lib.RESULTS_DIR):
        print(f"exported {f}")
  if args.check:
    diffs = paper_lib.check(paper_dir, args.from_dir)
    total = len(paper_lib.validate(paper_dir))
    for block_id, diff in diffs:
      print(f"block {block_id!r} differs from its regeneration:\n{diff}\n")
    if diffs:
      print(f"{len(diffs)} of {total} generated regions of "
            f"{paper_dir / paper_lib.PAPER_FILE} differ: "
            f"{', '.join(b for b, _ in diffs)}; run `mtrec paper` to "
            f"regenerate them (or fix the results they come from)")
      return 1
    print(f"{paper_dir / paper_lib.PAPER_FILE}: all {total} generated "
          f"regions match their regeneration (figures are not compared)")
    return 0
  gen, figures = paper_lib.write(paper_dir, args.from_dir)
  changed = (f"{len(gen.changed)} changed: {', '.join(gen.changed)}"
             if gen.changed else "none changed")
  print(f"{gen.path}: {len(gen.bodies)} generated regions ({changed})")
  for f in figures:
    print(f"wrote {f}")
  return 0


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

  def with_store(sp):
    sp.add_argument("--store", type=pathlib.Path,
                    default=store_lib.default_store_path(),
                    help="results store file (default: $MTREC_STORE or "
                         "./results/mtrec.db)")

  show = sub.add_parser("show", help="print the resolved configs of a grid")
  with_grid_args(show)
  show.set_defaults(fn=cmd_show)
  run = sub.add_parser("run", help="train every run of an experiment")
  with_grid_args(run)
  run.add_argument("--workdir", default="runs",
                   help="root folder for run outputs (default: ./runs)")
  run.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar")
  run.add_argument("--shard", metavar="I/N",
                   help="run only grid entries j with j %% N == I (0 <= I < "
                        "N), e.g. one cluster array job task each")
  run.add_argument("--force", action="store_true",
                   help="run again even if the store has the run done")
  run.add_argument("--resume", action="store_true",
                   help="continue each unfinished run from its newest usable "
                        "checkpoint in its run folder (a run with none starts "
                        "fresh); without it a run starts over and deletes "
                        "its old checkpoints")
  with_store(run)
  run.set_defaults(fn=cmd_run)
  status = sub.add_parser("status", help="done/running/failed/missing for "
                          "each run of a grid, from the results store")
  with_grid_args(status)
  with_store(status)
  status.set_defaults(fn=cmd_status)
  export = sub.add_parser("export", help="write an experiment's stored "
                          "results to a csv, jsonl or parquet file")
  export.add_argument("name", help="experiment name (see `mtrec list`)")
  export.add_argument("--format", required=True,
                      choices=store_lib.EXPORT_FORMATS,
                      help="csv/parquet: one row per run; jsonl: one full "
                           "result per line")
  export.add_argument("--out", metavar="PATH",
                      help="output file (default: results/NAME.FORMAT)")
  with_store(export)
  export.set_defaults(fn=cmd_export)

  table = sub.add_parser("table", help="an experiment's results table: rows "
                         "x metrics, mean ± std over seeds, Δm%%, ranks")
  table.add_argument("name", help="experiment name (see `mtrec list`)")
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
  with_store(table)
  table.set_defaults(fn=cmd_table)

  paper = sub.add_parser("paper", help="regenerate the tables and figures "
                         "of paper/paper.md (or check them)")
  paper.add_argument("--paper", default="paper", metavar="DIR",
                     help="the paper folder: paper.md, paper_spec.py, "
                          "results/, figures/ (default: ./paper)")
  paper.add_argument("--from", dest="from_dir", metavar="DIR",
                     help="read results from DIR/<experiment>.jsonl "
                          "(default: PAPER/results)")
  paper.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 when a generated region of "
                          "paper.md differs from its regeneration")
  paper.add_argument("--export", action="store_true",
                     help="first write PAPER/results/<experiment>.jsonl for "
                          "every experiment the paper uses, from the store")
  paper.add_argument("--store", type=pathlib.Path, default=None,
                     help="the results store --export reads (default: "
                          "$MTREC_STORE or ./results/mtrec.db)")
  paper.set_defaults(fn=cmd_paper)
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.fn(args)
  # ImportError: an optional package is missing (pyarrow for parquet).
  except (UnknownNameError, ValueError, TypeError, FileNotFoundError,
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
