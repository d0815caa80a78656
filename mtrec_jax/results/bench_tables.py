"""Benchmark tables: rows of ``benchmarks/results/<file>.json``.

A `BenchTable` block reads the JSON a ``python -m benchmarks.NAME --json``
run writes, always from the repository that holds the paper folder (the
parent of ``--paper``; ``--from`` names where experiment results are read
and does not move it). Those files are committed next to their Markdown
summaries (benchmarks/RESULTS.md), so the performance tables also
regenerate on a clean checkout and are checked by ``mtrec paper --check``;
their source line names the commit, the jax version and the device each
benchmark recorded.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping, Sequence

from mtrec_jax.registry import UnknownNameError, closest
from mtrec_jax.results.blocks import BENCH_DIR, SPEC_FILE, BenchTable

MISSING_CELL = "–"  # a row without the column's key


def bench_path(root: pathlib.Path, block: BenchTable) -> pathlib.Path:
  return root / block.folder / f"{block.file}.json"


def read_bench(root: str | os.PathLike, block: BenchTable) -> dict:
  """The benchmark JSON a block reads, checked: an object whose "rows" is a
  list of objects (the provenance keys beside it are optional)."""
  root = pathlib.Path(root)
  path = bench_path(root, block)
  rel = f"{block.folder}/{block.file}.json"
  if not path.exists():
    have = sorted(q.stem for q in path.parent.glob("*.json"))
    near = closest(block.file, have)
    raise FileNotFoundError(
        f"bench table {block.id!r}: no benchmark results at {path}; write "
        f"them with `python -m benchmarks.NAME --json {rel}` (see "
        f"benchmarks/RESULTS.md) or fix the file name in {SPEC_FILE}"
        + (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
        + (f"; {block.folder} has: {', '.join(have)}" if have else ""))
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
          f"bench table {block.id!r}: no row of {block.folder}/{block.file}.json "
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
                     f"of {block.folder}/{block.file}.json ({have})")
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
          f"bench table {block.id!r}: two rows of {block.folder}/{block.file}"
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
  parts = [f"Source: `{block.folder}/{block.file}.json`"]
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

