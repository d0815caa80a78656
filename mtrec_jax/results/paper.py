"""The paper's generated tables and figures, behind `mtrec paper`.

This module renders the blocks and generates, writes and checks paper.md;
each other job has its own module, whose names are re-exported here:

    blocks.py        the spec: Table, Figure, BenchTable, load_spec
    regions.py       the marker regions of paper.md, found and rewritten
    records.py       result records: from the store, the export, read back
    bench_tables.py  benchmark tables from benchmarks/results/<file>.json
    partial.py       blocks of a grid still running (partial=True)

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
import sys
import tempfile
from typing import Sequence

from mtrec_jax.registry import UnknownNameError
from mtrec_jax.results import partial, tables
# Re-exported: `mtrec_jax.results.paper` stays the one import of paper_spec.py
# files and of callers (`from mtrec_jax.results.paper import Table, ...`).
from mtrec_jax.results.bench_tables import (  # noqa: F401
    MISSING_CELL, bench_grid, bench_path, bench_source_line, grid_markdown,
    read_bench, render_bench)
from mtrec_jax.results.blocks import (  # noqa: F401
    BENCH_DIR, SPEC_FILE, BenchTable, Block, Column, Figure, Table,
    experiments_of, load_spec, partial_experiments, train_log_experiments)
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


def build(block: Table, results: Sequence[dict], baseline="block",
          seeds=None) -> tables.Table:
  return tables.build_table(
      results, rows=block.rows,
      metrics=block.metrics or default_metrics(block.experiment),
      baseline=block.baseline if baseline == "block" else baseline,
      where=block.where, directions=dict(block.directions or {}),
      cost=block.cost, seeds=seeds)


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


def render_table(block: Table, results: Sequence[dict] | None) -> str:
  """A table region's body: caption, the Markdown table, its source; for a
  partial block also how much of the grid is done (`partial`), or a
  sentence saying there are no results yet."""
  head = f"*{block.caption}*\n\n" if block.caption else ""
  try:
    if not block.partial:
      md = tables.to_markdown(build(block, results), digits=block.digits)
      return head + md + "\n" + source_line(block.experiment, results)
    prog = partial.progress(block.experiment, results)
    if results is None or prog.done == 0:
      return head + partial.no_results(prog, results is not None) + (
          "" if results is None else
          "\n" + source_line(block.experiment, results))
    table = build(block, partial.drop_empty_rows(results, prog),
                  partial.live_baselines(block.baseline, prog), prog.seeds)
    md = tables.to_markdown(table, digits=block.digits, list_missing=False)
  except (ValueError, UnknownNameError) as e:
    raise type(e)(f"table {block.id!r} ({block.experiment}): {e}") from None
  return (head + partial.status_line(prog) + md + "\n"
          + source_line(block.experiment, results))


def _nothing_to_plot(block: Figure, results) -> str | None:
  """Why a partial figure is not drawn ('' : no results file), else None."""
  if not block.partial:
    return None
  if results is None:
    return ""
  try:
    from mtrec_jax.results import figures
    return figures.nothing_to_plot(block.kind, results, **dict(block.options))
  except (ValueError, UnknownNameError) as e:
    raise type(e)(f"figure {block.id!r} ({block.experiment}): {e}") from None


def render_figure_region(block: Figure, results: Sequence[dict] | None
                         ) -> str:
  """A figure region's body: the image, its caption, PDF link and source;
  for a partial block also how much of the grid is done, or a sentence
  saying why there is no figure yet."""
  png = f"{FIGURES_DIR}/{block.id}.png"
  pdf = f"{FIGURES_DIR}/{block.id}.pdf"
  alt = block.caption or block.id
  caption = (block.caption + " " if block.caption else "")
  why = _nothing_to_plot(block, results)
  if why is not None:
    prog = partial.progress(block.experiment, results)
    return (f"*{block.caption}*\n\n" if block.caption else "") + (
        partial.no_results(prog, results is not None, why) + (
            "" if results is None else
            "\n" + source_line(block.experiment, results)))
  body = f"![{alt}]({png})\n\n{caption}([PDF]({pdf}))\n"
  if block.partial:
    status = partial.status_line(partial.progress(block.experiment, results))
    body += "\n" + status if status else ""
  return body + source_line(block.experiment, results)


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
  results: dict[str, list[dict] | None]  # experiment -> records (None:
  # a partial experiment without its results file)


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


def _load_all(blocks, results_dir) -> dict[str, list[dict] | None]:
  """experiment -> records; None for a partial experiment without a
  results file (its blocks say so; any other missing file is an error)."""
  optional = partial_experiments(blocks)
  out = {}
  for name in experiments_of(blocks):
    if name in optional and not (pathlib.Path(results_dir)
                                 / f"{name}.jsonl").exists():
      out[name] = None
    else:
      out[name] = read_results(results_dir, name)
  return out


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
  blocks = [b for b in gen.blocks if isinstance(b, Figure)
            and _nothing_to_plot(b, gen.results[b.experiment]) is None]
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
                      store_path: str | os.PathLike | None = None,
                      only: str | Sequence[str] | None = None
                      ) -> list[pathlib.Path]:
  """`mtrec paper --export [NAMES]`: writes PAPER/results/<experiment>.jsonl
  for every experiment the paper uses (or those of `only`, names or one
  comma-separated string), from the store at `store_path` (default
  $MTREC_STORE or ./results/mtrec.db). A partial experiment (`Table.partial`)
  with no run in the store yet is skipped; any other is an error."""
  from mtrec_jax.results import store as store_lib
  paper_dir = pathlib.Path(paper_dir)
  blocks = validate(paper_dir)
  names = experiments_of(blocks)
  if only:
    wanted = ([n.strip() for n in only.split(",") if n.strip()]
              if isinstance(only, str) else list(only))
    for n in wanted:
      if n not in names:
        raise UnknownNameError(
            f"--export {n}: the paper uses no experiment {n!r}; it uses "
            f"{', '.join(names)}")
    names = [n for n in names if n in wanted]
  path = store_lib.check_store_path(store_path or
                                    store_lib.default_store_path())
  if not store_lib.store_exists(path):
    raise FileNotFoundError(
        f"no results store at {path}; run the experiments the paper uses "
        f"({', '.join(names)}) with `mtrec run NAME`, or pass --store PATH "
        f"(or set $MTREC_STORE)")
  with store_lib.Store(path, create=False) as store:
    written = export(store, names, paper_dir / RESULTS_DIR,
                     partial=sorted(partial_experiments(blocks)),
                     train_log=train_log_experiments(blocks))
  for n in names:
    if paper_dir / RESULTS_DIR / f"{n}.jsonl" not in written:
      print(f"not exported {n}: the store has none of the runs of its "
            f"current grid yet (a partial experiment: its blocks say so)",
            file=sys.stderr)
  return written
