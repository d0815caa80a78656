"""The `mtrec` commands as Python functions, for notebooks and scripts.

Each function does what its command does, with the same names for the same
options (``set`` is ``--set``, ``only`` is ``--only``, ...), and the command
line calls it: one home for each job.  An experiment is a registered name,
``my_pkg.module:NAME`` or ``path/to/file.py:NAME`` (`mtrec_jax.plugins`).

    >>> import mtrec_jax
    >>> [r.name for r in mtrec_jax.configs("quickstart")]
    ['model=shared_bottom,seed=0', 'model=mmoe,seed=0']

Training a grid and reading it back (about a minute on 2 CPU cores, so not
run as a doctest)::

    results = mtrec_jax.run("quickstart", store="/tmp/q.db", workdir="/tmp/q")
    [r["status"] for r in results]             # ['done', 'done']
    print(mtrec_jax.table("quickstart", store="/tmp/q.db", format="md"))
    mtrec_jax.status("quickstart", store="/tmp/q.db")  # one RunStatus a run

Option values take the command line's text or plain Python: ``seeds="0-2"``
or ``[0, 1, 2]``; ``only={"model": ["mmoe"]}`` or ``["model=mmoe"]``;
``set={"train.num_steps": 10}`` or ``["train.num_steps=10"]``.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable, Mapping, Sequence

from mtrec_jax import experiment as experiment_lib, plugins
from mtrec_jax.results import records
from mtrec_jax.results import store as store_lib
from mtrec_jax.results.status import MISSING

Overrides = Sequence[str] | Mapping[str, Any] | None
Only = Sequence[str] | Mapping[str, Any] | None
Seeds = str | int | Sequence[int] | None


def axis_values(items, flag: str = "only") -> dict[str, list[str]]:
  """['model=mmoe,ple', ...] or {'model': ['mmoe', 'ple']} (or one value)
  -> {'model': ['mmoe', 'ple']}, values as text."""
  if isinstance(items, Mapping):
    return {str(k): [str(v) for v in (vs if isinstance(vs, (list, tuple))
                                      else [vs])] for k, vs in items.items()}
  out: dict[str, list[str]] = {}
  for item in items or ():
    if "=" not in item:
      raise ValueError(f"{flag} {item!r}: write axis=value[,value...] "
                       f"(e.g. {flag} model=mmoe)")
    axis, values = item.split("=", 1)
    out.setdefault(axis.strip(), []).extend(
        v.strip() for v in values.split(","))
  return out


def parse_seeds(seeds: Seeds) -> tuple[int, ...] | None:
  """None (the experiment's seeds), '0-2' / '0,3', an int, or ints."""
  if seeds is None:
    return None
  if isinstance(seeds, str):
    return experiment_lib.parse_seeds(seeds)
  if isinstance(seeds, int):
    return (seeds,)
  return tuple(int(s) for s in seeds)


def experiment(name: str) -> experiment_lib.Experiment:
  """The experiment `name` (registered, ``module:NAME`` or
  ``file.py:NAME``)."""
  return experiment_lib.get_experiment(name)


def experiments() -> list[tuple[str, str]]:
  """`mtrec list`: (name, first docstring line) of every registered
  experiment, plug-ins' included (see `registered`)."""
  return registered("experiments")


# `mtrec list KIND`: the registries a user picks names from.
KINDS = ("experiments", "strategies", "models", "datasets")


def registered(kind: str = "experiments") -> list[tuple[str, str]]:
  """`mtrec list KIND`: (name, first docstring line) of every registered
  experiment, strategy, model or dataset; an entry from outside this
  package (a plug-in, a module spec) says where it comes from."""
  from mtrec_jax import registry
  if kind not in KINDS:
    raise registry.UnknownNameError(
        registry.unknown_name_message("kind", kind, KINDS))
  reg = {"experiments": registry.EXPERIMENTS,
         "strategies": registry.STRATEGIES, "models": registry.MODELS,
         "datasets": registry.DATASETS}[kind]
  out = []
  for name in reg.names():
    obj = reg.get(name)
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    line = doc[0] if doc else ""
    module = getattr(obj, "__module__", "") or ""
    if module and module.split(".")[0] not in ("mtrec_jax", "experiments"):
      line = f"{line} [{module}]".strip()
    out.append((name, line))
  return out


def selection(*, set: Overrides = None, only: Only = None,
              seeds: Seeds = None):
  """The `sweep.Selection` of these options."""
  from mtrec_jax import sweep
  return sweep.Selection(overrides=set or (), seeds=parse_seeds(seeds),
                         only=axis_values(only, "--only"))


def configs(experiment: str, *, set: Overrides = None, only: Only = None,
            seeds: Seeds = None) -> list[experiment_lib.Run]:
  """`mtrec show`: the selected runs, each with its resolved `config`."""
  exp = experiment_lib.get_experiment(experiment)
  return selection(set=set, only=only, seeds=seeds).runs(exp)


def _stderr(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def sweep(experiment: str, *, set: Overrides = None, only: Only = None,
          seeds: Seeds = None, store=None, workdir="runs",
          shard: str | tuple[int, int] | None = None, force: bool = False,
          resume: bool = False, population: str | int | None = None,
          progress: bool = False, log: Callable[[str], None] | None = _stderr):
  """`mtrec run`, returning the whole `sweep.SweepOutcome` (what each run
  of this shard did; `results`: one record per grid run)."""
  from mtrec_jax import sweep as sweep_lib
  from mtrec_jax.train import population as population_lib
  if shard is None or isinstance(shard, str):
    shard = sweep_lib.parse_shard(shard)
  exp = experiment_lib.get_experiment(experiment)
  trainer = population_lib.trainer(None if population is None
                                   else str(population))
  return sweep_lib.run_sweep(
      exp, selection=selection(set=set, only=only, seeds=seeds), store=store,
      workdir=workdir, shard=shard, force=force, resume=resume,
      progress=progress, log=log, trainer=trainer)


def run(experiment: str, *, set: Overrides = None, only: Only = None,
        seeds: Seeds = None, store=None, workdir="runs", force: bool = False,
        resume: bool = False, population: str | int | None = None,
        progress: bool = False, log: Callable[[str], None] | None = _stderr
        ) -> list[dict]:
  """`mtrec run`: trains the selected runs the store lacks; returns one
  result record per selected run, in grid order (``status``: done,
  diverged, failed, ...; ``grid``; ``metrics``...).  A failed run does not
  raise: its record says ``failed``.  store: a path (default $MTREC_STORE or
  ./results/mtrec.db); workdir: run folders (default ./runs); log: hears
  progress lines (default: printed to stderr; None: silent)."""
  return list(sweep(experiment, set=set, only=only, seeds=seeds, store=store,
                    workdir=workdir, force=force, resume=resume,
                    population=population, progress=progress,
                    log=log).results)


def status(experiment: str, *, set: Overrides = None, only: Only = None,
           seeds: Seeds = None, store=None) -> list[store_lib.RunStatus]:
  """`mtrec status`: one `RunStatus` per selected run (done, running,
  diverged, failed or missing); all missing when there is no store yet.
  store: a file path or a PostgreSQL URL (default $MTREC_STORE or
  ./results/mtrec.db)."""
  exp = experiment_lib.get_experiment(experiment)
  runs = selection(set=set, only=only, seeds=seeds).runs(exp)
  path = store if store is not None else store_lib.default_store_path()
  expected = [(r.name, *records.run_key(r)) for r in runs]
  if not store_lib.store_exists(path):  # don't create one just to read it
    return [store_lib.RunStatus(n, h, s, MISSING, None, 0, "")
            for n, h, s in expected]
  from mtrec_jax import sweep as sweep_lib
  with store_lib.Store(path, create=False) as db:  # + runs on other data
    return sweep_lib.with_data_changes(db, exp.name, runs,
                                       db.status(exp.name, expected))


def stored_name(experiment: str) -> str:
  """The name results are stored under: NAME of ``module:NAME`` (the module
  is imported), else `experiment` as given (a stored experiment stays
  readable after its code is gone)."""
  if plugins.is_spec(experiment):
    return experiment_lib.get_experiment(experiment).name
  return experiment


def export(experiment: str, format: str, *, out=None, store=None
           ) -> tuple[pathlib.Path, int]:
  """`mtrec export`: writes the stored results (csv, jsonl or parquet) to
  `out` (default results/NAME.FORMAT); returns (file, number of runs)."""
  name = stored_name(experiment)
  path = store if store is not None else store_lib.default_store_path()
  out = pathlib.Path(out or pathlib.Path("results", f"{name}.{format}"))
  with store_lib.Store(path, create=False) as db:  # none: error
    written = db.export(name, format, out)
    n = len(db.results(name))
  return written, n


def table(experiment: str, *, metrics: Sequence[str] | None = None,
          rows: str | Sequence[str] | None = None, baseline="auto",
          where: Only = None, seeds: Seeds = None, set: Overrides = None,
          store=None, from_dir=None, format: str | None = None,
          digits: int = 4):
  """`mtrec table`: the experiment's results table, rows x metrics (mean
  ± std over seeds, Δm%, ranks), as a `results.tables.Table` (data:
  ``t.cell(("mmoe",), "test/t0/mse").mean``), or, with format "md" or
  "latex", its text.  Results come from the store (the runs of the grid
  with these `set`/`seeds`), or from `from_dir`/NAME.jsonl as they are."""
  from mtrec_jax.results import paper, tables
  if format not in (None, "md", "latex"):
    raise ValueError(f"table format {format!r}: use 'md', 'latex' or None "
                     f"(the Table itself)")
  seeds = parse_seeds(seeds)
  if from_dir is not None:
    if set:
      raise ValueError("--set selects runs in the store; with --from DIR the "
                       "file's runs are tabulated as they are (drop --set)")
    name = stored_name(experiment)
    results = records.read_results(from_dir, name)
    default_metrics = paper.default_metrics(name)
    table_seeds = seeds
  else:
    exp = experiment_lib.get_experiment(experiment)
    runs = exp.runs(overrides=set or (), seeds=seeds)
    results = records.grid_from_store(
        store if store is not None else store_lib.default_store_path(),
        exp.name, runs)
    default_metrics = tuple(exp.table_metrics)
    table_seeds = None
  if isinstance(rows, str):
    rows = tuple(a.strip() for a in rows.split(",") if a.strip())
  where = axis_values(where, "--where")
  tables.check_where(results, where, "--where")
  if isinstance(baseline, str):
    baseline = tables.parse_baseline(baseline)
  t = tables.build_table(results, rows=rows,
                         metrics=metrics or default_metrics,
                         baseline=baseline, where=where, seeds=table_seeds)
  if format is None:
    return t
  render = tables.to_latex if format == "latex" else tables.to_markdown
  return render(t, digits=digits)
