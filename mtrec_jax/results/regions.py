"""The generated regions of paper.md: marker lines, found and rewritten.

    <!-- mtrec:table quickstart-mse -->
    (generated: do not edit by hand)
    <!-- mtrec:end -->

Markers stand alone on their lines; everything outside a region's body (the
prose, the markers) is kept byte for byte by `replace_regions`.
"""
from __future__ import annotations

import re
from typing import Mapping, NamedTuple, Sequence

from mtrec_jax.registry import UnknownNameError, closest
from mtrec_jax.results.blocks import SPEC_FILE, Block, kind_of

PAPER_FILE = "paper.md"
END_MARKER = "<!-- mtrec:end -->"
_START = re.compile(r"<!-- mtrec:(table|figure) (\S+) -->")
_MARKERISH = re.compile(r"<!--\s*mtrec:")


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
    if kind_of(b) != r.kind:
      raise ValueError(f"{where}:{r.start}: region {r.id!r} is marked "
                       f"{r.kind} but {SPEC_FILE} makes it a {kind_of(b)}; "
                       f"write <!-- mtrec:{kind_of(b)} {r.id} -->")
  have = {r.id for r in regions}
  for b in blocks:
    if b.id not in have:
      raise ValueError(
          f"{where} has no region for block {b.id!r}; add the two lines "
          f"<!-- mtrec:{kind_of(b)} {b.id} --> and {END_MARKER} where it "
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

