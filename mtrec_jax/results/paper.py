"""The paper's generated tables and figures, behind `mtrec paper`.

This module renders the blocks and generates, writes and checks paper.md;
each other job has its own module, whose names are re-exported here:

    blocks.py        the spec: Table, Figure, BenchTable, load_spec
    regions.py       the marker regions of paper.md, found and rewritten
    records.py       result records: from the store, the export, read back
    bench_tables.py  benchmark tables from benchmarks/results/<file>.json

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
import os
import pathlib
import shutil
import tempfile
from typing import Sequence

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import tables
# Re-exported: `mtrec_jax.results.paper` stays the one import of paper_spec.py
# files and of callers (`from mtrec_jax.results.paper import Table, ...`).
from mtrec_jax.results.bench_tables import (  # noqa: F401
    MISSING_CELL, bench_grid, bench_path, bench_source_line, grid_markdown,
    read_bench, render_bench)
from mtrec_jax.results.blocks import (  # noqa: F401
    BENCH_DIR, SPEC_FILE, BenchTable, Block, Column, Figure, Table,
    experiments_of, load_spec)
from mtrec_jax.results.records import (  # noqa: F401
    EXPORT_KEYS, dumps_records, export, missing_record, no_results_message,
    read_results, record, store_results, write_atomic)
from mtrec_jax.results.regions import (  # noqa: F401
    END_MARKER, PAPER_FILE, Region, match_regions, parse_regions,
    region_text, replace_regions)
from mtrec_jax.results.status import DONE, MISSING  # noqa: F401

RESULTS_DIR = "results"
FIGURES_DIR = "figures"


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
  done = sum(1 for r in results if r.get("status") == DONE)
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
      write_atomic({gen.path: gen.new.encode()})
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


def export_from_store(paper_dir: str | os.PathLike = "paper",
                      store_path: str | os.PathLike | None = None
                      ) -> list[pathlib.Path]:
  """`mtrec paper --export`: writes PAPER/results/<experiment>.jsonl for
  every experiment the paper uses, from the store at `store_path` (default
  $MTREC_STORE or ./results/mtrec.db)."""
  from mtrec_jax.results import store as store_lib
  paper_dir = pathlib.Path(paper_dir)
  names = experiments_of(validate(paper_dir))
  path = pathlib.Path(store_path or store_lib.default_store_path())
  if not path.exists():
    raise FileNotFoundError(
        f"no results store at {path}; run the experiments the paper uses "
        f"({', '.join(names)}) with `mtrec run NAME`, or pass --store PATH "
        f"(or set $MTREC_STORE)")
  with store_lib.Store(path, create=False) as store:
    return export(store, names, paper_dir / RESULTS_DIR)
