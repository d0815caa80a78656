"""What `mtrec paper` generates: the blocks of ``paper/paper_spec.py``.

``BLOCKS`` there is a list of `Table` (a results table of one experiment),
`Figure` (a figure of one experiment) and `BenchTable` (a table of one
benchmark JSON file) blocks, each with the id of its region in paper.md
(see `mtrec_jax.results.regions`). `load_spec` reads and checks them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import re
import sys
from typing import Any, Iterable, Mapping, NamedTuple

from mtrec_jax.registry import UnknownNameError

SPEC_FILE = "paper_spec.py"
BENCH_DIR = "benchmarks/results"  # relative to the repository root
# Where a BenchTable may read its rows: benchmark results, and the outputs of
# the independent reference implementations (references/README.md).
REFERENCE_DIR = "references/results"
ROW_DIRS = (BENCH_DIR, REFERENCE_DIR)
ID = re.compile(r"[a-z0-9][a-z0-9._-]*")


def _check_id(block_id: str) -> None:
  if not isinstance(block_id, str) or not ID.fullmatch(block_id):
    raise ValueError(f"block id {block_id!r} must be lowercase letters, "
                     f"digits, '.', '_' or '-' (it names figure files), e.g. "
                     f"'census-mtl-auc'")


@dataclasses.dataclass(frozen=True)
class Table:
  """A results table: `tables.build_table` options plus an id.

  metrics: default the experiment's `table_metrics`, else each task's
  primary test metric. baseline: 'auto', None, {axis: value} or a tuple of
  up to three {axis: value} (one Δm% column and t-test mark each, the
  first primary). where: {axis: value or [values]}. caption: an italic
  line above the table. directions: {metric: 'max' or 'min'} for columns
  whose name is not a registered metric (e.g. report values). cost: add
  the seconds per step the runs measured (`tables.step_seconds`).
  partial: the experiment's grid may be incomplete (see `Figure.partial`).
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
  cost: bool = False
  partial: bool = False

  def __post_init__(self):
    _check_id(self.id)
    if isinstance(self.baseline, list):
      object.__setattr__(self, "baseline", tuple(self.baseline))
    if isinstance(self.metrics, str) or isinstance(self.rows, str):
      raise ValueError(f"table {self.id!r}: metrics and rows are tuples of "
                       f"names, e.g. metrics=('test/income/auc',)")


@dataclasses.dataclass(frozen=True)
class Figure:
  """A figure: `figures.KINDS[kind](results, ..., **options)`, an id and a
  caption; written to paper/figures/<id>.png and .pdf.

  partial: the experiment's grid may be incomplete in the paper (a grid
  still running): without its results file the region says "no results
  yet" instead of failing, `mtrec paper --export` skips it while the store
  has none of its runs, and otherwise the region states how many runs of
  the grid are done and leaves out rows with none. Every block of one
  experiment must agree.
  """
  id: str
  experiment: str
  kind: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  caption: str = ""
  partial: bool = False

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
  of `columns`. caption: an italic line above the table. folder: the
  repository folder holding the file, one of `ROW_DIRS` (default the
  benchmark results; ``references/results`` for a comparison with a
  reference implementation, written by its script there).
  """
  id: str
  file: str
  columns: tuple
  where: Mapping[str, Any] | None = None
  sort: tuple[str, ...] | None = ()
  pivot: tuple | None = None
  digits: int = 2
  caption: str = ""
  folder: str = BENCH_DIR

  def __post_init__(self):
    _check_id(self.id)
    where = f"bench table {self.id!r}"
    if self.folder not in ROW_DIRS:
      raise ValueError(f"{where}: folder {self.folder!r} is not one of "
                       f"{', '.join(map(repr, ROW_DIRS))}")
    if (not isinstance(self.file, str) or not ID.fullmatch(self.file)
        or self.file.endswith(".json")):
      raise ValueError(f"{where}: file {self.file!r} must be the name of a "
                       f"JSON file in {self.folder}/ without '.json', e.g. "
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


def kind_of(block: Block) -> str:
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
  partial_experiments(blocks, str(path))
  return list(blocks)


def partial_experiments(blocks: Iterable[Block], where: str = "the spec"
                        ) -> set[str]:
  """The experiments whose blocks say partial=True; raises when blocks of
  one experiment disagree (its results file is then either optional or
  not, for all of them)."""
  flags: dict[str, set[bool]] = {}
  for b in blocks:
    if not isinstance(b, BenchTable):
      flags.setdefault(b.experiment, set()).add(bool(b.partial))
  mixed = sorted(e for e, f in flags.items() if len(f) > 1)
  if mixed:
    raise ValueError(f"{where}: the blocks of experiment {mixed[0]!r} "
                     f"disagree on partial=; give all of them partial=True "
                     f"(its grid may be incomplete) or none")
  return {e for e, f in flags.items() if True in f}


def train_log_experiments(blocks: Iterable[Block]) -> set[str]:
  """The experiments with a figure that draws from the runs' train_log."""
  from mtrec_jax.results import figures
  return {b.experiment for b in blocks if isinstance(b, Figure) and
          figures.reads_train_log(b.kind, b.options)}


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

