"""Result records: from the store, as export records, and from an export.

The paper and `mtrec table --from` read ``<dir>/<experiment>.jsonl``, a
small frozen export of the results store (`export`, ``mtrec paper
--export``): each run of the experiment's current grid, in grid order (a run
not in the store is a ``missing`` record, so a missing seed stays visible),
with what tables and figures need (grid, status, metrics, report, eval
history, the run's measured durations and population for the cost column;
the train log only where a figure draws it) and the provenance a reviewer
needs (config and its hash, seed, attempt, git commit, package versions,
device); clock times, run ids and paths are left out, so exporting the
same store twice gives the same bytes.  `import_records` stores an
export's finished runs back into a store.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Collection, Iterable, Mapping, Sequence

from mtrec_jax.registry import closest
from mtrec_jax.results.run_files import file_mode, plain
from mtrec_jax.results.status import FINAL, MISSING

# The keys of a result that the export keeps (see the module docstring);
# anything else (clock times, run ids, params_dir, ...) is left out. The
# durations a run measured (wall_time_s, compile_time_s) and its population
# are kept: `tables.step_seconds` is the cost column of a table.
EXPORT_KEYS = (
    "experiment", "run_name", "grid", "seed", "config_hash", "data", "status",
    "error", "attempt", "git", "packages", "devices", "tasks", "aux_tasks",
    "model", "strategy", "steps", "best_step", "diverged_step", "selection",
    "metrics", "report", "initial_val_losses", "strategy_state", "train_log",
    "evals", "config", "wall_time_s", "compile_time_s", "population")


def run_key(run) -> tuple[str, int]:
  """(config hash, seed): how the store identifies a run of a grid."""
  from mtrec_jax import config as config_lib
  return config_lib.config_hash(run.config), int(run.grid["seed"])


def record(result: Mapping[str, Any],
           evals: Sequence[Mapping] | None = None) -> dict:
  """The export form of a stored result: EXPORT_KEYS only, plus `evals`."""
  out = {k: result[k] for k in EXPORT_KEYS if k in result}
  out.setdefault("metrics", {})
  out.setdefault("train_log", [])
  if evals is not None:
    out["evals"] = [dict(e) for e in evals]
  out.setdefault("evals", [])
  return out


def missing_record(experiment: str, run) -> dict:
  """The record of a grid run the store does not have."""
  config_hash, seed = run_key(run)
  return {"experiment": experiment, "run_name": run.name,
          "grid": dict(run.grid), "seed": seed, "config_hash": config_hash,
          "status": MISSING, "metrics": {}, "train_log": [], "evals": []}


def store_results(store, experiment: str, runs: Sequence, *,
                  evals: bool = False) -> list[dict]:
  """One record per run of `runs` (an experiment's grid), in grid order:
  the store's latest attempt of its config hash and seed, else `missing`.

  Runs of other configs in the store (older code, other --set values) are
  left out, so a table shows the current grid only. `evals`: attach each
  run's eval history (for validation-curve figures).
  """
  stored = {(r.get("config_hash"), r.get("seed")): r
            for r in store.results(experiment)}
  out = []
  for run in runs:
    res = stored.get(run_key(run))
    if res is None:
      out.append(missing_record(experiment, run))
      continue
    history = store.eval_history(res["run_id"]) if evals else None
    rec = record(res, history)
    rec["grid"] = dict(run.grid)  # the grid's own values and axis order
    rec["run_name"] = run.name
    out.append(rec)
  return out


def grid_from_store(path: str | os.PathLike, experiment: str,
                    runs: Sequence) -> list[dict]:
  """`store_results` of the store file at `path`, for `mtrec table`; raises
  (naming the fix) when there is no store, or it has none of the runs."""
  from mtrec_jax.results import store as store_lib
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f"no results store at {path}; run `mtrec run {experiment}` first, or "
        f"pass --store PATH (or set $MTREC_STORE), or --from DIR for an "
        f"exported jsonl")
  with store_lib.Store(path, create=False) as store:
    results = store_results(store, experiment, runs)
    other = len(store.results(experiment))
  if all(r["status"] == MISSING for r in results):
    hint = (f"; it holds {other} runs of {experiment!r} with other configs: "
            f"pass the --set overrides (and --seeds) they were run with"
            if other else f"; run `mtrec run {experiment}` first")
    raise ValueError(f"results store {path} has none of the {len(runs)} "
                     f"runs of {experiment!r}'s current grid{hint}")
  return results


def no_results_message(experiment: str, where: str) -> str:
  return (f"no results of experiment {experiment!r} in {where}; produce "
          f"them with `mtrec run {experiment}`, then `mtrec paper --export` "
          f"(writes paper/results/{experiment}.jsonl)")


def read_results(results_dir: str | os.PathLike, experiment: str) -> list[dict]:
  """The records of results_dir/<experiment>.jsonl (an export, or the output
  of `mtrec export NAME --format jsonl`), in file order."""
  results_dir = pathlib.Path(results_dir)
  path = results_dir / f"{experiment}.jsonl"
  if not path.exists():
    have = sorted(p.stem for p in results_dir.glob("*.jsonl"))
    near = closest(experiment, have)
    hint = (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
    raise FileNotFoundError(
        no_results_message(experiment, str(path)) + hint +
        (f"; {results_dir} has: {', '.join(have)}" if have else ""))
  out = [rec for _, rec in read_lines(path)]
  if not out:
    raise ValueError(no_results_message(experiment, f"{path} (empty)"))
  return out


def read_lines(path: pathlib.Path) -> list[tuple[int, dict]]:
  """(line number, record) of each non-blank line of an export file."""
  out = []
  for i, line in enumerate(path.read_text().splitlines()):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i + 1}: not JSON ({e.msg}); re-export it "
                       f"with `mtrec paper --export`") from None
    if not isinstance(rec, dict):
      raise ValueError(f"{path}:{i + 1}: each line must be one result "
                       f"object, got {type(rec).__name__}")
    out.append((i + 1, rec))
  return out


# What a record must hold to stand for a finished run in a store.
_IMPORT_KEYS = ("experiment", "run_name", "grid", "seed", "config_hash",
                "config", "status", "metrics")


def import_records(store, path: str | os.PathLike) -> dict[str, int]:
  """`mtrec store import FILE`: the finished runs of an export (``mtrec
  paper --export``, ``mtrec export --format jsonl``) stored as runs of
  `store`, so a sweep on this store skips them and tables read them.

  Why: a store lives on one machine; an export is what a repository keeps
  and a colleague sends. A long grid run over several machines (or
  sessions whose disks do not last) continues from the last export:
  ``mtrec store import`` it into a fresh store, then ``mtrec run NAME
  --resume``.  Each done or diverged record becomes one attempt with its
  own seed, data hash and config hash, as the store's migrations compute it
  (`store.stored_config_hash`: an export from before a config key was added
  is re-keyed as the store it came from was), via `Store.claim`, then
  `Store.finish` with its eval history; so a run the store already has
  (done or diverged on the same data) is left as it is: importing twice
  changes nothing.
  Records of other statuses (missing, failed, preempted, running) are
  counted and skipped: those runs are to be run. The whole file is checked
  before anything is stored; an error names the file and line. Attempt
  numbers count this store's attempts (an imported run is attempt 1).

  Returns counts: {"imported", "already", "unfinished", "rekeyed"}.
  """
  from mtrec_jax.results import store as store_lib
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no export file {path}; write one with `mtrec "
                            f"paper --export` or `mtrec export NAME --format "
                            f"jsonl`")
  lines = read_lines(path)
  for n, rec in lines:
    lost = [k for k in _IMPORT_KEYS if k not in rec]
    if lost and rec.get("status") in FINAL:
      raise ValueError(f"{path}:{n}: a {rec['status']} record without "
                       f"{', '.join(lost)}; it is not an export of a stored "
                       f"run (re-export it with `mtrec paper --export`)")
  counts = {"imported": 0, "already": 0, "unfinished": 0, "rekeyed": 0}
  for n, rec in lines:
    if rec.get("status") not in FINAL:
      counts["unfinished"] += 1
      continue
    # An export made before a config key was added carries the hash of
    # then; the store's migrations re-key such runs (`store._rekey`), and so
    # does the import.
    try:
      config_hash = store_lib.stored_config_hash(rec["config"])
    except Exception:  # noqa: BLE001 (as the migration: keep the hash)
      config_hash = rec["config_hash"]
    counts["rekeyed"] += config_hash != rec["config_hash"]
    data = rec.get("data") if isinstance(rec.get("data"), dict) else {}
    run_id = store.claim(rec["experiment"], rec["run_name"], rec["grid"],
                         rec["config"], config_hash, rec["seed"],
                         provenance=rec, data_hash=data.get("hash"))
    if run_id is None:
      counts["already"] += 1
      continue
    result = {k: v for k, v in rec.items() if k != "evals"}
    result["config_hash"] = config_hash
    try:
      store.finish(run_id, result, evals=rec.get("evals") or ())
    except BaseException as e:
      store.fail(run_id, f"import of {path}:{n} failed: {e}")
      raise ValueError(f"{path}:{n}: {e}") from e
    counts["imported"] += 1
  return counts


def dumps_records(records: Iterable[Mapping]) -> str:
  """JSON lines with sorted keys: the same records give the same bytes."""
  return "".join(json.dumps(plain(r), sort_keys=True, allow_nan=False,
                            ensure_ascii=False) + "\n" for r in records)


_mode_for = file_mode  # mkstemp's temporary files are private, 0600


def write_atomic(files: Mapping[pathlib.Path, bytes]) -> None:
  """Writes every file to a temporary name first, then renames them all:
  an error before the renames leaves every target as it was."""
  temps = []
  try:
    for path, data in files.items():
      path.parent.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
      temps.append(tmp)
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.chmod(tmp, _mode_for(path))
    for tmp, path in zip(temps, files):
      os.replace(tmp, path)
  finally:
    for tmp in temps:
      pathlib.Path(tmp).unlink(missing_ok=True)


def export(store, experiments: Sequence[str], out_dir: str | os.PathLike,
           partial: Sequence[str] = (),
           train_log: Collection[str] | None = None) -> list[pathlib.Path]:
  """Writes out_dir/<experiment>.jsonl for each experiment, from the store;
  all files or none. Raises when an experiment has no run of its current
  grid in the store, unless it is in `partial` (a grid still running,
  `Table.partial`): that one is skipped, its file left as it is.

  `train_log`: the experiments whose records keep their train log (None:
  all). The per-step training losses and weights are most of an export's
  bytes and only some figures draw them (`blocks.train_log_experiments`);
  the store keeps them either way."""
  from mtrec_jax import experiment as experiment_lib
  out_dir = pathlib.Path(out_dir)
  files = {}
  for name in experiments:
    exp = experiment_lib.get_experiment(name)
    records = store_results(store, name, exp.runs(), evals=True)
    if train_log is not None and name not in train_log:
      for r in records:
        r["train_log"] = []
    if all(r["status"] == MISSING for r in records) and name in partial:
      continue
    if all(r["status"] == MISSING for r in records):
      other = len(store.results(name))
      raise ValueError(no_results_message(
          name, f"the results store {store.path} (none of the "
                f"{len(records)} runs of its current grid" +
                (f"; the store has {other} runs of other configs, e.g. from "
                 f"older code or --set overrides" if other else "") + ")"))
    files[out_dir / f"{name}.jsonl"] = dumps_records(records).encode()
  write_atomic(files)
  return list(files)

