"""The paper's generated tables and figures, behind `mtrec paper`.

``paper/paper.md`` is hand-written prose with generated regions::

    <!-- mtrec:table quickstart-mse -->
    (generated: do not edit by hand)
    <!-- mtrec:end -->

``paper/paper_spec.py`` says what goes in each region: ``BLOCKS``, a list of
`Table` and `Figure` blocks, each naming its id, its experiment and its
options, and `BenchTable` blocks, each naming a benchmark file. Adding a
block is one entry there plus its two marker lines in paper.md, where it
should appear (a BenchTable's region is marked ``mtrec:table``).

Where the numbers come from: ``paper/results/<experiment>.jsonl``, a small
frozen export of the results store (`export`, ``mtrec paper --export``),
committed with the paper, so the tables regenerate on a clean checkout with
no store and no training, and ``mtrec paper --check`` can compare them byte
for byte. The export holds each run of the experiment's current grid, in
grid order (a run not in the store is a ``missing`` record, so a missing seed
stays visible), with what the tables and figures need (grid, status,
metrics, report, train log, eval history) and the provenance a reviewer
needs (config and its hash, seed, attempt, git commit, package versions,
device); times, run ids and paths are left out, so exporting the same store
twice gives the same bytes.

A `BenchTable` reads ``benchmarks/results/<file>.json`` instead, the JSON a
``python -m benchmarks.NAME --json`` run writes, always from the repository
that holds the paper folder (the parent of ``--paper``; ``--from`` names
where experiment results are read and does not move it). Those files are
committed next to their Markdown summaries (benchmarks/RESULTS.md), so the
performance tables also regenerate on a clean checkout and are checked by
``--check``; their source line names the commit, the jax version and the
device each benchmark recorded.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from mtrec_jax.registry import UnknownNameError, closest
from mtrec_jax.results import tables

SPEC_FILE = "paper_spec.py"
PAPER_FILE = "paper.md"
RESULTS_DIR = "results"
BENCH_DIR = "benchmarks/results"  # relative to the repository root
FIGURES_DIR = "figures"
MISSING = "missing"
_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
_START = re.compile(r"<!-- mtrec:(table|figure) (\S+) -->")
END_MARKER = "<!-- mtrec:end -->"
_MARKERISH = re.compile(r"<!--\s*mtrec:")

# The keys of a result that the export keeps (see the module docstring);
# anything else (times, run ids, params_dir, ...) is left out.
EXPORT_KEYS = (
    "experiment", "run_name", "grid", "seed", "config_hash", "status",
    "error", "attempt", "git", "packages", "devices", "tasks", "aux_tasks",
    "model", "strategy", "steps", "best_step", "diverged_step", "selection",
    "metrics", "report", "initial_val_losses", "strategy_state", "train_log",
    "evals", "config")


# ----------------------------------------------------------------------------
# The spec.


def _check_id(block_id: str) -> None:
  if not isinstance(block_id, str) or not _ID.fullmatch(block_id):
    raise ValueError(f"block id {block_id!r} must be lowercase letters, "
                     f"digits, '.', '_' or '-' (it names figure files), e.g. "
                     f"'census-mtl-auc'")


@dataclasses.dataclass(frozen=True)
class Table:
  """A results table: `tables.build_table` options plus an id.

  metrics: default the experiment's `table_metrics`, else each task's
  primary test metric. baseline: 'auto', None or {axis: value}. where:
  {axis: value or [values]}. caption: an italic line above the table.
  directions: {metric: 'max' or 'min'} for columns whose name is not a
  registered metric (e.g. report values).
  """
  id: str
  experiment: str
  metrics: tuple[str, ...] = ()
  rows: tuple[str, ...] | None = None
  baseline: Mapping[str, Any] | str | None = "auto"
  where: Mapping[str, Any] | None = None
  digits: int = 4
  caption: str = ""
  directions: Mapping[str, str] | None = None

  def __post_init__(self):
    _check_id(self.id)
    if isinstance(self.metrics, str) or isinstance(self.rows, str):
      raise ValueError(f"table {self.id!r}: metrics and rows are tuples of "
                       f"names, e.g. metrics=('test/income/auc',)")


@dataclasses.dataclass(frozen=True)
class Figure:
  """A figure: `figures.KINDS[kind](results, ..., **options)`, an id and a
  caption; written to paper/figures/<id>.png and .pdf."""
  id: str
  experiment: str
  kind: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  caption: str = ""

  def __post_init__(self):
    from mtrec_jax.results import figures
    _check_id(self.id)
    try:
      figures.check_options(self.kind, self.options)
    except UnknownNameError as e:
      raise UnknownNameError(f"figure {self.id!r}: {e}") from None


class Column(NamedTuple):
  """One column of a `BenchTable`: the JSON key, its header, its format."""
  key: str
  label: str
  format: str | None  # a format spec such as ',.0f' or '.1%'; None: default


def _column(spec, where: str) -> Column:
  """A column spec, 'key' | (key, label) | (key, label, format), checked."""
  if isinstance(spec, str):
    spec = (spec,)
  if (not isinstance(spec, (tuple, list)) or not 1 <= len(spec) <= 3
      or not all(isinstance(x, str) or x is None for x in spec)
      or not isinstance(spec[0], str) or not spec[0]):
    raise ValueError(f"{where}: column {spec!r} must be 'key', "
                     f"('key', 'label') or ('key', 'label', 'format'), e.g. "
                     f"('fraction', 'of peak', '.1%')")
  key = spec[0]
  label = spec[1] if len(spec) > 1 and spec[1] else key
  fmt = spec[2] if len(spec) > 2 else None
  if fmt is not None:
    try:
      format(1.5, fmt)
    except ValueError as e:
      raise ValueError(f"{where}: column {key!r} has the format {fmt!r}, "
                       f"which Python cannot apply to a number ({e}); use a "
                       f"format spec such as '.2f', ',.0f' or '.1%'") from None
  return Column(key, label, fmt)


@dataclasses.dataclass(frozen=True)
class BenchTable:
  """A table of benchmark figures: rows of
  ``benchmarks/results/<file>.json`` (what ``python -m benchmarks.NAME
  --json`` writes), read from the repository holding the paper folder.

  columns: each 'key', (key, label) or (key, label, format); a float
  without a format gets `digits` decimals. where: {key: value or [values]}
  keeps the rows that match. sort: keys to sort the rows by (stable;
  default the file's order). pivot: (across, value) or (across, value,
  format) makes one column per distinct value of `across`, in order of first
  appearance, holding `value`; the rows are then the distinct combinations
  of `columns`. caption: an italic line above the table.
  """
  id: str
  file: str
  columns: tuple
  where: Mapping[str, Any] | None = None
  sort: tuple[str, ...] | None = ()
  pivot: tuple | None = None
  digits: int = 2
  caption: str = ""

  def __post_init__(self):
    _check_id(self.id)
    where = f"bench table {self.id!r}"
    if (not isinstance(self.file, str) or not _ID.fullmatch(self.file)
        or self.file.endswith(".json")):
      raise ValueError(f"{where}: file {self.file!r} must be the name of a "
                       f"JSON file in {BENCH_DIR}/ without '.json', e.g. "
                       f"'peers_cpu'")
    if isinstance(self.columns, str) or not self.columns:
      raise ValueError(f"{where}: columns is a tuple of column specs, e.g. "
                       f"('strategy', ('step_ms', 'step ms'))")
    if isinstance(self.sort, str) or not all(isinstance(k, str)
                                             for k in self.sort or ()):
      raise ValueError(f"{where}: sort is a tuple of keys, e.g. "
                       f"sort=('model',)")
    object.__setattr__(self, "sort", tuple(self.sort or ()))
    if self.where is not None and not isinstance(self.where, Mapping):
      raise ValueError(f"{where}: where is {{key: value or [values]}}, e.g. "
                       f"where={{'k': 4}}")
    if not isinstance(self.digits, int) or self.digits < 0:
      raise ValueError(f"{where}: digits must be a whole number >= 0")
    self.column_specs()
    self.pivot_spec()

  def column_specs(self) -> list[Column]:
    return [_column(c, f"bench table {self.id!r}") for c in self.columns]

  def pivot_spec(self) -> tuple[str, Column] | None:
    """(across, value column), or None without a pivot."""
    if self.pivot is None:
      return None
    p = self.pivot
    if (isinstance(p, str) or not isinstance(p, (tuple, list))
        or len(p) not in (2, 3)):
      raise ValueError(f"bench table {self.id!r}: pivot must be (across, "
                       f"value) or (across, value, format), e.g. ('mode', "
                       f"'step_ms', '.2f')")
    value = _column((p[1], p[1]) + tuple(p[2:]), f"bench table {self.id!r}")
    return str(p[0]), value


Block = Table | Figure | BenchTable


def _kind(block: Block) -> str:
  """The marker word: a benchmark table is marked like any table."""
  return "figure" if isinstance(block, Figure) else "table"


def load_spec(paper_dir: str | os.PathLike) -> list[Block]:
  """The BLOCKS of paper_dir/paper_spec.py, checked (unique ids)."""
  path = pathlib.Path(paper_dir) / SPEC_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"no paper spec at {path}; run from the repository root (the folder "
        f"holding paper/) or pass --paper DIR")
  spec = importlib.util.spec_from_file_location("mtrec_paper_spec", path)
  module = importlib.util.module_from_spec(spec)
  keep, sys.dont_write_bytecode = sys.dont_write_bytecode, True
  try:  # no paper/__pycache__ next to the paper
    spec.loader.exec_module(module)
  finally:
    sys.dont_write_bytecode = keep
  blocks = getattr(module, "BLOCKS", None)
  if not isinstance(blocks, (list, tuple)):
    raise ValueError(f"{path} must define BLOCKS = [Table(...), "
                     f"Figure(...), BenchTable(...), ...]")
  seen = set()
  for b in blocks:
    if not isinstance(b, (Table, Figure, BenchTable)):
      raise TypeError(f"{path}: BLOCKS holds {b!r}; each entry must be a "
                      f"mtrec_jax.results.paper.Table, Figure or BenchTable")
    if b.id in seen:
      raise ValueError(f"{path}: block id {b.id!r} is used twice; ids must "
                       f"be unique")
    seen.add(b.id)
  return list(blocks)


def experiments_of(blocks: Iterable[Block]) -> list[str]:
  """The experiments the blocks use, in order of first use; a BenchTable
  reads a benchmark file, not an experiment, so it adds none."""
  out: list[str] = []
  for b in blocks:
    if isinstance(b, BenchTable):
      continue
    if b.experiment not in out:
      out.append(b.experiment)
  return out


# ----------------------------------------------------------------------------
# Generated regions in paper.md.


class Region(NamedTuple):
  kind: str  # table | figure
  id: str
  start: int  # index of the first line after the start marker
  end: int  # index of the end-marker line


def parse_regions(text: str, where: str = PAPER_FILE) -> list[Region]:
  """The generated regions of `text`; markers stand alone on their lines."""
  lines = text.splitlines(keepends=True)
  regions: list[Region] = []
  open_: tuple[str, str, int] | None = None
  for i, line in enumerate(lines):
    s = line.strip()
    if not _MARKERISH.match(s):
      continue
    m = _START.fullmatch(s)
    if m:
      if open_ is not None:
        raise ValueError(f"{where}:{i + 1}: region {m.group(2)!r} starts "
                         f"before region {open_[1]!r} (line {open_[2]}) "
                         f"ends; add {END_MARKER} after it")
      open_ = (m.group(1), m.group(2), i + 1)
    elif s == END_MARKER:
      if open_ is None:
        raise ValueError(f"{where}:{i + 1}: {END_MARKER} without a start "
                         f"marker such as <!-- mtrec:table ID -->")
      regions.append(Region(open_[0], open_[1], open_[2], i))
      open_ = None
    else:
      raise ValueError(f"{where}:{i + 1}: cannot read the marker {s!r}; "
                       f"write <!-- mtrec:table ID -->, <!-- mtrec:figure "
                       f"ID --> or {END_MARKER}, each alone on its line")
  if open_ is not None:
    raise ValueError(f"{where}:{open_[2]}: region {open_[1]!r} has no "
                     f"{END_MARKER}")
  ids = [r.id for r in regions]
  for r in regions:
    if ids.count(r.id) > 1:
      raise ValueError(f"{where}: region {r.id!r} appears {ids.count(r.id)} "
                       f"times; each block has one region")
  return regions


def match_regions(regions: Sequence[Region], blocks: Sequence[Block],
                  where: str = PAPER_FILE) -> None:
  """Raises unless regions and blocks pair up one to one, kinds agreeing."""
  by_id = {b.id: b for b in blocks}
  for r in regions:
    b = by_id.get(r.id)
    if b is None:
      near = closest(r.id, by_id)
      raise UnknownNameError(
          f"{where}:{r.start}: region {r.id!r} has no block in "
          f"{SPEC_FILE}." + (f" Did you mean {', '.join(map(repr, near))}?"
                             if near else "")
          + f" Blocks: {', '.join(by_id) or '(none)'}. Add the block or "
          f"remove the region.")
    if _kind(b) != r.kind:
      raise ValueError(f"{where}:{r.start}: region {r.id!r} is marked "
                       f"{r.kind} but {SPEC_FILE} makes it a {_kind(b)}; "
                       f"write <!-- mtrec:{_kind(b)} {r.id} -->")
  have = {r.id for r in regions}
  for b in blocks:
    if b.id not in have:
      raise ValueError(
          f"{where} has no region for block {b.id!r}; add the two lines "
          f"<!-- mtrec:{_kind(b)} {b.id} --> and {END_MARKER} where it "
          f"should appear")


def region_text(text: str, region: Region) -> str:
  return "".join(text.splitlines(keepends=True)[region.start:region.end])


def replace_regions(text: str, new: Mapping[str, str],
                    where: str = PAPER_FILE) -> str:
  """`text` with the body of each region named in `new` replaced; every
  other character (the prose, the markers) stays as it was."""
  lines = text.splitlines(keepends=True)
  regions = parse_regions(text, where)
  unknown = set(new) - {r.id for r in regions}
  if unknown:
    raise ValueError(f"{where} has no region {sorted(unknown)[0]!r}")
  out, pos = [], 0
  for r in regions:
    out += lines[pos:r.start]
    if r.id in new:
      body = new[r.id]
      out.append(body if body.endswith("\n") or not body else body + "\n")
    else:
      out += lines[r.start:r.end]
    pos = r.end
  out += lines[pos:]
  return "".join(out)


# ----------------------------------------------------------------------------
# Results: from the store, as export records, and from an export.


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
  from mtrec_jax import config as config_lib
  return {"experiment": experiment, "run_name": run.name,
          "grid": dict(run.grid), "seed": int(run.grid["seed"]),
          "config_hash": config_lib.config_hash(run.config),
          "status": MISSING, "metrics": {}, "train_log": [], "evals": []}


def store_results(store, experiment: str, runs: Sequence, *,
                  evals: bool = False) -> list[dict]:
  """One record per run of `runs` (an experiment's grid), in grid order:
  the store's latest attempt of its config hash and seed, else `missing`.

  Runs of other configs in the store (older code, other --set values) are
  left out, so a table shows the current grid only. `evals`: attach each
  run's eval history (for validation-curve figures).
  """
  from mtrec_jax import config as config_lib
  stored = {(r.get("config_hash"), r.get("seed")): r
            for r in store.results(experiment)}
  out = []
  for run in runs:
    key = (config_lib.config_hash(run.config), int(run.grid["seed"]))
    res = stored.get(key)
    if res is None:
      out.append(missing_record(experiment, run))
      continue
    history = store.eval_history(res["run_id"]) if evals else None
    rec = record(res, history)
    rec["grid"] = dict(run.grid)  # the grid's own values and axis order
    rec["run_name"] = run.name
    out.append(rec)
  return out


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
    out.append(rec)
  if not out:
    raise ValueError(no_results_message(experiment, f"{path} (empty)"))
  return out


def dumps_records(records: Iterable[Mapping]) -> str:
  """JSON lines with sorted keys: the same records give the same bytes."""
  from mtrec_jax.results.store import _plain
  return "".join(json.dumps(_plain(r), sort_keys=True, allow_nan=False,
                            ensure_ascii=False) + "\n" for r in records)


def _mode_for(path: pathlib.Path) -> int:
  """The file's current mode, or the umask's default for a new file
  (mkstemp's temporary files are private, 0600)."""
  try:
    return path.stat().st_mode & 0o777
  except FileNotFoundError:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(files: Mapping[pathlib.Path, bytes]) -> None:
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


def export(store, experiments: Sequence[str],
           out_dir: str | os.PathLike) -> list[pathlib.Path]:
  """Writes out_dir/<experiment>.jsonl for each experiment, from the store;
  all files or none. Raises when an experiment has no run of its current
  grid in the store."""
  from mtrec_jax import experiment as experiment_lib
  out_dir = pathlib.Path(out_dir)
  files = {}
  for name in experiments:
    exp = experiment_lib.get_experiment(name)
    records = store_results(store, name, exp.runs(), evals=True)
    if all(r["status"] == MISSING for r in records):
      other = len(store.results(name))
      raise ValueError(no_results_message(
          name, f"the results store {store.path} (none of the "
                f"{len(records)} runs of its current grid" +
                (f"; the store has {other} runs of other configs, e.g. from "
                 f"older code or --set overrides" if other else "") + ")"))
    files[out_dir / f"{name}.jsonl"] = dumps_records(records).encode()
  _write_atomic(files)
  return list(files)


# ----------------------------------------------------------------------------
# Rendering blocks.


def default_metrics(experiment: str) -> tuple[str, ...]:
  """The experiment's table_metrics; () when it has none or is not
  registered any more (the table then takes each task's primary metric)."""
  from mtrec_jax import experiment as experiment_lib
  experiment_lib.load_experiments()
  from mtrec_jax.registry import EXPERIMENTS
  if experiment not in EXPERIMENTS:
    return ()
  return tuple(experiment_lib.get_experiment(experiment).table_metrics)


def build(block: Table, results: Sequence[dict]) -> tables.Table:
  return tables.build_table(
      results, rows=block.rows,
      metrics=block.metrics or default_metrics(block.experiment),
      baseline=block.baseline, where=block.where,
      directions=dict(block.directions or {}))


def source_line(experiment: str, results: Sequence[dict]) -> str:
  """Where a block's numbers come from: the runs and their provenance."""
  done = sum(1 for r in results if r.get("status") == "done")
  commits = []
  for r in results:
    git = r.get("git") or {}
    if git.get("commit"):
      c = str(git["commit"])[:7] + (" with uncommitted changes"
                                    if git.get("dirty") else "")
      if c not in commits:
        commits.append(c)
  jax_versions = sorted({(r.get("packages") or {}).get("jax")
                         for r in results} - {None})
  devices = sorted({str((r.get("devices") or {}).get("kind"))
                    for r in results if (r.get("devices") or {}).get("kind")})
  parts = [f"Source: `{RESULTS_DIR}/{experiment}.jsonl`, {len(results)} runs "
           f"({done} done)"]
  if commits:
    parts.append(f"code at commit {', '.join(commits)}")
  if jax_versions:
    parts.append(f"jax {', '.join(jax_versions)}")
  if devices:
    parts.append(f"on {', '.join(devices)}")
  return "*" + "; ".join(parts) + ".*\n"


def render_table(block: Table, results: Sequence[dict]) -> str:
  """A table region's body: caption, the Markdown table, its source."""
  try:
    md = tables.to_markdown(build(block, results), digits=block.digits)
  except (ValueError, UnknownNameError) as e:
    raise type(e)(f"table {block.id!r} ({block.experiment}): {e}") from None
  head = f"*{block.caption}*\n\n" if block.caption else ""
  return head + md + "\n" + source_line(block.experiment, results)


def render_figure_region(block: Figure, results: Sequence[dict]) -> str:
  """A figure region's body: the image, its caption, PDF link and source."""
  png = f"{FIGURES_DIR}/{block.id}.png"
  pdf = f"{FIGURES_DIR}/{block.id}.pdf"
  alt = block.caption or block.id
  caption = (block.caption + " " if block.caption else "")
  return (f"![{alt}]({png})\n\n{caption}([PDF]({pdf}))\n"
          + source_line(block.experiment, results))


def draw_figure(block: Figure, results: Sequence[dict],
                base: pathlib.Path) -> list[pathlib.Path]:
  from mtrec_jax.results import figures
  try:
    return figures.draw(block.kind, results, base, **dict(block.options))
  except (ValueError, UnknownNameError) as e:
    raise type(e)(f"figure {block.id!r} ({block.experiment}): {e}") from None


# ----------------------------------------------------------------------------
# Benchmark tables: rows of benchmarks/results/<file>.json.

MISSING_CELL = "–"  # a row without the column's key


def bench_path(root: pathlib.Path, file: str) -> pathlib.Path:
  return root / BENCH_DIR / f"{file}.json"


def read_bench(root: str | os.PathLike, block: BenchTable) -> dict:
  """The benchmark JSON a block reads, checked: an object whose "rows" is a
  list of objects (the provenance keys beside it are optional)."""
  root = pathlib.Path(root)
  path = bench_path(root, block.file)
  rel = f"{BENCH_DIR}/{block.file}.json"
  if not path.exists():
    have = sorted(q.stem for q in path.parent.glob("*.json"))
    near = closest(block.file, have)
    raise FileNotFoundError(
        f"bench table {block.id!r}: no benchmark results at {path}; write "
        f"them with `python -m benchmarks.NAME --json {rel}` (see "
        f"benchmarks/RESULTS.md) or fix the file name in {SPEC_FILE}"
        + (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
        + (f"; {BENCH_DIR} has: {', '.join(have)}" if have else ""))
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg}); rerun the "
                     f"benchmark that writes it") from None
  rows = data.get("rows") if isinstance(data, dict) else None
  if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
    raise ValueError(f"{path}: a benchmark result is a JSON object whose "
                     f"\"rows\" is a list of objects, as `python -m "
                     f"benchmarks.NAME --json` writes")
  return data


def _keys(rows: Sequence[Mapping]) -> list[str]:
  """Every key of the rows, in order of first appearance."""
  out: dict[str, None] = {}
  for r in rows:
    out.update(dict.fromkeys(r))
  return list(out)


def _check_keys(block: BenchTable, rows: Sequence[Mapping]) -> None:
  """Raises UnknownNameError for a key the spec names that no row has."""
  keys = _keys(rows)
  pivot = block.pivot_spec()
  named = ([c.key for c in block.column_specs()] + list(block.where or {})
           + list(block.sort) + ([pivot[0], pivot[1].key] if pivot else []))
  for key in named:
    if key not in keys:
      near = closest(key, keys)
      raise UnknownNameError(
          f"bench table {block.id!r}: no row of {BENCH_DIR}/{block.file}.json "
          f"has the column {key!r}."
          + (f" Did you mean {', '.join(map(repr, near))}?" if near else "")
          + f" Its columns: {', '.join(keys) or '(no rows)'}. Fix the column "
          f"in {SPEC_FILE}, or rerun the benchmark that writes it.")


def _wanted(value) -> list:
  return list(value) if isinstance(value, (list, tuple)) else [value]


def _select_rows(block: BenchTable, rows: Sequence[Mapping]) -> list[Mapping]:
  """The rows matching `where`; raises when none does, naming the values
  each filtered column has."""
  where = dict(block.where or {})
  out = [r for r in rows
         if all(r.get(k) in _wanted(v) for k, v in where.items())]
  if not out:
    have = "; ".join(
        f"{k} has {', '.join(dict.fromkeys(repr(r.get(k)) for r in rows))}"
        for k in where)
    raise ValueError(f"bench table {block.id!r}: where={where!r} keeps no row "
                     f"of {BENCH_DIR}/{block.file}.json ({have})")
  return out


def _order(value) -> tuple:
  """A sort key across types: numbers, then text, then missing values."""
  if _is_number(value):
    return (0, float(value), "")
  if value is None:
    return (2, 0.0, "")
  return (1, 0.0, str(value))


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value, fmt: str | None, digits: int) -> str:
  """A value as the table prints it: numbers by the column's format (floats
  default to `digits` decimals), text escaped for Markdown."""
  if value is None:
    return MISSING_CELL
  if _is_number(value):
    if fmt is not None:
      return format(value, fmt)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"
  text = value if isinstance(value, str) else json.dumps(value,
                                                         sort_keys=True)
  return text.replace("\\", "\\\\").replace("|", "\\|")


def _pivoted(block: BenchTable, rows: Sequence[Mapping]
             ) -> tuple[list[str], list[list]]:
  """(headers of the pivot columns, one list of values per output row)."""
  across, value = block.pivot_spec()
  index = [c.key for c in block.column_specs()]
  if any(isinstance(r.get(across), (list, dict)) for r in rows):
    raise ValueError(f"bench table {block.id!r}: pivot column {across!r} "
                     f"must hold single values (text or numbers), not lists "
                     f"or objects")
  heads = list(dict.fromkeys(r.get(across) for r in rows))
  table: dict[tuple, tuple[list, dict]] = {}  # index key -> (index, cells)
  for r in rows:
    key = tuple(json.dumps(r.get(k), sort_keys=True) for k in index)
    labels, cells = table.setdefault(key, ([r.get(k) for k in index], {}))
    if r.get(across) in cells:
      raise ValueError(
          f"bench table {block.id!r}: two rows of {BENCH_DIR}/{block.file}"
          f".json have {dict(zip(index, labels))} and {across}="
          f"{r.get(across)!r}; add a column or a where that tells them apart")
    cells[r.get(across)] = r.get(value.key)
  out = [labels + [cells.get(h) for h in heads]
         for labels, cells in table.values()]
  return [MISSING_CELL if h is None else str(h) for h in heads], out


def bench_grid(block: BenchTable, data: Mapping
               ) -> tuple[list[str], list[list[str]], list[bool]]:
  """(headers, rows of cell text, which columns are numeric) of a block."""
  rows = data["rows"]
  _check_keys(block, rows)
  rows = _select_rows(block, rows)
  for key in reversed(block.sort):
    rows = sorted(rows, key=lambda r, key=key: _order(r.get(key)))
  cols = block.column_specs()
  if block.pivot is None:
    heads = [c.label for c in cols]
    values = [[r.get(c.key) for c in cols] for r in rows]
  else:
    pivot_heads, values = _pivoted(block, rows)
    heads = [c.label for c in cols] + pivot_heads
    cols = cols + [block.pivot_spec()[1]] * len(pivot_heads)
  numeric = [all(_is_number(row[j]) or row[j] is None for row in values)
             and any(row[j] is not None for row in values)
             for j in range(len(heads))]
  text = [[_cell(v, c.format, block.digits) for v, c in zip(row, cols)]
          for row in values]
  return [_cell(h, None, 0) for h in heads], text, numeric


def grid_markdown(heads: Sequence[str], rows: Sequence[Sequence[str]],
                  numeric: Sequence[bool]) -> str:
  """A padded GitHub Markdown table, numbers right-aligned, as
  `tables.to_markdown` lays out the results tables."""
  widths = [max(3, len(h), *(len(r[j]) for r in rows))
            for j, h in enumerate(heads)]

  def line(cells):
    return "| " + " | ".join(
        s.rjust(w) if num else s.ljust(w)
        for s, w, num in zip(cells, widths, numeric)) + " |"

  rule = "|" + "|".join("-" * (w + 1) + ":" if num else ":" + "-" * (w + 1)
                        for w, num in zip(widths, numeric)) + "|"
  return "\n".join([line(heads), rule] + [line(r) for r in rows]) + "\n"


def bench_source_line(block: BenchTable, data: Mapping) -> str:
  """Where a benchmark table's figures come from: the file, and the code,
  versions, batch and machine the benchmark recorded."""
  parts = [f"Source: `{BENCH_DIR}/{block.file}.json`"]
  git = data.get("git") or {}
  if git.get("commit"):
    parts.append(f"code at commit {str(git['commit'])[:7]}"
                 + (" with uncommitted changes" if git.get("dirty") else ""))
  jax_version = (data.get("packages") or {}).get("jax")
  if jax_version:
    parts.append(f"jax {jax_version}")
  if data.get("torch_version"):
    parts.append(f"torch {data['torch_version']}")
  if isinstance(data.get("batch_size"), int):
    parts.append(f"batch {data['batch_size']}")
  device = data.get("device") or (data.get("devices") or {}).get("kind")
  if device:
    parts.append(f"on {device}")
  return "*" + "; ".join(parts) + ".*\n"


def render_bench(block: BenchTable, root: str | os.PathLike) -> str:
  """A benchmark table region's body: caption, the table, its source."""
  data = read_bench(root, block)
  heads, rows, numeric = bench_grid(block, data)
  head = f"*{block.caption}*\n\n" if block.caption else ""
  return (head + grid_markdown(heads, rows, numeric) + "\n"
          + bench_source_line(block, data))


# ----------------------------------------------------------------------------
# Generating and checking the paper.


@dataclasses.dataclass
class Generated:
  """What `generate` computed: the new paper text and which regions change."""
  path: pathlib.Path
  old: str
  new: str
  bodies: dict[str, str]  # block id -> region body
  changed: list[str]  # block ids whose body differs from paper.md's
  blocks: list[Block]
  results: dict[str, list[dict]]  # experiment -> records


def _paper_paths(paper_dir, results_dir):
  paper_dir = pathlib.Path(paper_dir)
  path = paper_dir / PAPER_FILE
  if not path.exists():
    raise FileNotFoundError(f"no {path}; run from the repository root (the "
                            f"folder holding paper/) or pass --paper DIR")
  results_dir = (paper_dir / RESULTS_DIR if results_dir is None
                 else pathlib.Path(results_dir))
  return paper_dir, path, results_dir


def validate(paper_dir: str | os.PathLike = "paper") -> list[Block]:
  """The spec's blocks, once they and paper.md's regions pair up."""
  paper_dir, path, _ = _paper_paths(paper_dir, None)
  blocks = load_spec(paper_dir)
  match_regions(parse_regions(path.read_text(), str(path)), blocks, str(path))
  return blocks


def _load_all(blocks, results_dir) -> dict[str, list[dict]]:
  return {name: read_results(results_dir, name)
          for name in experiments_of(blocks)}


def generate(paper_dir: str | os.PathLike = "paper",
             results_dir: str | os.PathLike | None = None) -> Generated:
  """Regenerates every region's body in memory (figures are not drawn)."""
  paper_dir, path, results_dir = _paper_paths(paper_dir, results_dir)
  blocks = load_spec(paper_dir)
  old = path.read_text()
  regions = parse_regions(old, str(path))
  match_regions(regions, blocks, str(path))
  results = _load_all(blocks, results_dir)
  bodies = {}
  for b in blocks:
    if isinstance(b, BenchTable):
      bodies[b.id] = render_bench(b, paper_dir.resolve().parent)
    elif isinstance(b, Table):
      bodies[b.id] = render_table(b, results[b.experiment])
    else:
      bodies[b.id] = render_figure_region(b, results[b.experiment])
  new = replace_regions(old, bodies, str(path))
  changed = [r.id for r in regions if region_text(old, r) != bodies[r.id]]
  return Generated(path, old, new, bodies, changed, blocks, results)


def write(paper_dir: str | os.PathLike = "paper",
          results_dir: str | os.PathLike | None = None,
          ) -> tuple[Generated, list[pathlib.Path]]:
  """Rewrites paper.md's regions and draws the figures, all or nothing:
  figures are drawn to a temporary folder, and only when every block has
  succeeded do they and paper.md replace the old files."""
  gen = generate(paper_dir, results_dir)
  blocks = [b for b in gen.blocks if isinstance(b, Figure)]
  fig_dir = gen.path.parent / FIGURES_DIR
  fig_dir.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=fig_dir, prefix=".draw-"))
  written = []
  try:
    drawn = []
    for b in blocks:
      drawn += draw_figure(b, gen.results[b.experiment], tmp / b.id)
    for f in drawn:
      os.replace(f, fig_dir / f.name)
      written.append(fig_dir / f.name)
    if gen.new != gen.old:
      _write_atomic({gen.path: gen.new.encode()})
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return gen, written


def check(paper_dir: str | os.PathLike = "paper",
          results_dir: str | os.PathLike | None = None,
          context: int = 2, max_lines: int = 40) -> list[tuple[str, str]]:
  """(block id, short unified diff) for each region of paper.md that differs
  from its regeneration; [] when all match. Figures are not compared."""
  gen = generate(paper_dir, results_dir)
  regions = {r.id: r for r in parse_regions(gen.old, str(gen.path))}
  out = []
  for block_id in gen.changed:
    diff = list(difflib.unified_diff(
        region_text(gen.old, regions[block_id]).splitlines(),
        gen.bodies[block_id].splitlines(),
        f"{gen.path} [{block_id}]", f"regenerated [{block_id}]",
        n=context, lineterm=""))
    if len(diff) > max_lines:
      diff = diff[:max_lines] + [f"... ({len(diff) - max_lines} more lines)"]
    out.append((block_id, "\n".join(diff)))
  return out
