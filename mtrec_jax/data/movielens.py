"""MovieLens 100K / 1M: raw readers and a leakage-free sequential dataset.

Two layers:

* `read_movielens(path, variant)` parses the GroupLens files (an extracted
  folder or the official .zip, read in place) into a `MovieLensRaw` of NumPy
  arrays, checking row counts, id ranges, ratings and cross references, so a
  truncated or foreign file fails here with the file and 1-based line number
  instead of as a silent shift in the metrics.
* `movielens_dataset(raw, max_len=...)` turns the raw ratings into a
  `Dataset` of next-item examples with the leave-one-out split of SASRec /
  BERT4Rec (see `SPLIT_RULE`), plus rating, like and genre labels for
  multi-task training; with `cold_start_items` > 0, a cold-start split whose
  held-out items never reach training (see `COLD_START_RULE`).
  `load_movielens(path, ...)` does both.

Data: F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and
Context", ACM TiiS 5(4), 2015; download from `DOWNLOAD_URL`.
"""
from __future__ import annotations

import bisect
import dataclasses
import io
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from mtrec_jax.data.dataset import Dataset
from mtrec_jax.specs import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec

DOWNLOAD_URL = "https://grouplens.org/datasets/movielens/"
DATA_DIR_ENV = "MTREC_DATA_DIR"

# Files each variant needs; the first one holds the ratings.
FILES = {
    "100k": ("u.data", "u.item", "u.user", "u.genre", "u.occupation"),
    "1m": ("ratings.dat", "movies.dat", "users.dat"),
}

# Sizes of the official releases (`strict_counts=True` checks all of them).
# 'items' counts the rows of the item file; 'max_item' is the largest id.
OFFICIAL = {
    "100k": dict(ratings=100_000, users=943, items=1682, max_user=943,
                 max_item=1682),
    "1m": dict(ratings=1_000_209, users=6040, items=3883, max_user=6040,
               max_item=3952),
}

# Ids above this are rejected even with strict_counts=False: tables are
# indexed by id, so one corrupted huge id would allocate gigabytes.
MAX_ID = 10_000_000

# ML-1M genres (its README order); ML-100K reads its 19 (with 'unknown') from
# u.genre.
GENRES_1M = ("Action", "Adventure", "Animation", "Children's", "Comedy",
             "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir",
             "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western")

# ML-1M occupation codes 0..20 (its README); categorical id = code + 1.
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care",
    "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer")

# Categorical user features; id 0 is padding / missing in every vocabulary.
GENDERS = ("M", "F")  # ids 1, 2
# ML-1M's age groups (its codes are the lower bounds 1, 18, 25, ...); ML-100K
# ages in years fall into the same groups, so both variants share ids 1..7.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_BUCKETS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
AGE_CODES_1M = (1, 18, 25, 35, 45, 50, 56)
# First character of the zip code: digits 0..9 -> ids 1..10, anything else
# (Canadian codes in ML-100K) -> 11; an empty code -> 0.
ZIP_BUCKETS = tuple("0123456789") + ("other",)
# Release year buckets for item metadata: 0 unknown, 1 = before 1940,
# 2 = 1940s, ..., 7 = 1990s, 8 = 2000 and later.
YEAR_EDGES = (1940, 1950, 1960, 1970, 1980, 1990, 2000)
YEAR_BUCKETS = ("unknown", "<1940", "1940s", "1950s", "1960s", "1970s",
                "1980s", "1990s", ">=2000")

# Full ranking (history excluded) and SASRec's sampled protocol; see
# `mtrec_jax.tasks.metrics`.
NEXT_ITEM_METRICS = ("hr@10", "ndcg@10", "mrr", "s_hr@10", "s_ndcg@10",
                     "logloss")

LIKE_THRESHOLD = 4  # 'like' = rating >= 4 stars

SPLIT_RULE = (
    "Per user, interactions are sorted by (timestamp, item id). The last one "
    "is the test target, the second-last the validation target, the rest the "
    "training history. Training examples: every history position t >= 1 is a "
    "target with the previous (at most max_len) history items as input. "
    "Validation: input = the last max_len training-history items. Test: input "
    "= the last max_len items of training history + the validation item. "
    "Users with fewer than min_interactions (>= 3) interactions are dropped.")


# ----------------------------------------------------------------------------
# Raw data.


@dataclasses.dataclass(frozen=True, eq=False)
class MovieLensRaw:
  """The parsed files of one MovieLens release, as NumPy arrays.

  Ratings are in file order.  Per-user and per-item tables are indexed by id
  (row 0 = padding); ids absent from the user/item file have all-zero rows.

  Attributes:
    variant: '100k' or '1m'.
    source: where the files were read from (folder or .zip).
    user, item: int32 [R] ids (>= 1).
    rating: int32 [R] stars in 1..5.
    timestamp: int64 [R] Unix seconds.
    item_genres: uint8 [num_items + 1, G] genre multi-hot.
    item_year: int32 [num_items + 1] release year, 0 = unknown.
    item_titles: titles by item id ('' for padding / absent ids).
    item_listed, user_listed: bool [num_items + 1] / [num_users + 1], True
      for ids listed in the item / user file (ML-1M skips some movie ids).
    user_gender, user_age, user_occupation, user_zip: int32 [num_users + 1]
      categorical ids (see GENDERS, AGE_BUCKETS, occupation_names,
      ZIP_BUCKETS), 0 = padding / missing.
    genre_names: the G genre names, in multi-hot column order.
    occupation_names: name of occupation id k at position k - 1.
  """
  variant: str
  source: str
  user: np.ndarray
  item: np.ndarray
  rating: np.ndarray
  timestamp: np.ndarray
  item_genres: np.ndarray
  item_year: np.ndarray
  item_titles: tuple[str, ...]
  item_listed: np.ndarray
  user_listed: np.ndarray
  user_gender: np.ndarray
  user_age: np.ndarray
  user_occupation: np.ndarray
  user_zip: np.ndarray
  genre_names: tuple[str, ...]
  occupation_names: tuple[str, ...]

  @property
  def num_ratings(self) -> int:
    return int(self.user.shape[0])

  @property
  def num_users(self) -> int:
    """Largest user id (the user table has num_users + 1 rows)."""
    return int(self.user_gender.shape[0] - 1)

  @property
  def num_items(self) -> int:
    """Largest item id (the item table has num_items + 1 rows)."""
    return int(self.item_genres.shape[0] - 1)

  @property
  def num_genres(self) -> int:
    return len(self.genre_names)

  def counts(self) -> dict[str, int]:
    """Sizes, for logs and `info`."""
    return {
        "ratings": self.num_ratings,
        "users_with_ratings": int(np.unique(self.user).size),
        "items_rated": int(np.unique(self.item).size),
        "users_in_file": int(np.count_nonzero(self.user_listed)),
        "items_in_file": int(np.count_nonzero(self.item_listed)),
        "max_user_id": self.num_users,
        "max_item_id": self.num_items,
        "genres": self.num_genres,
    }


def normalize_variant(variant: str) -> str:
  """'100k' / 'ml-100k' / '1M' -> '100k' or '1m'."""
  key = str(variant).lower().removeprefix("ml-")
  if key not in FILES:
    raise ValueError(f"unknown MovieLens variant {variant!r}; use one of "
                     f"{', '.join(repr(v) for v in FILES)}")
  return key


# ----------------------------------------------------------------------------
# Locating the files: a folder, a folder holding ml-<v>/ or ml-<v>.zip, or the
# .zip itself.


class _Source:
  """Reads the release's files from a folder or from members of a .zip."""

  def __init__(self, variant: str, folder: Optional[Path] = None,
               archive: Optional[Path] = None):
    self.variant, self.folder, self.archive = variant, folder, archive
    self._members: dict[str, str] = {}
    if archive is not None:
      with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
      prefix = f"ml-{variant}/"
      for name in FILES[variant]:
        found = sorted((m for m in names if m == prefix + name
                        or m.rsplit("/", 1)[-1] == name),
                       key=lambda m: (m != prefix + name, len(m)))
        if not found:
          raise FileNotFoundError(
              f"{archive} has no member {prefix + name}; expected the "
              f"official ml-{variant}.zip with {', '.join(FILES[variant])}. "
              f"Re-download it from {DOWNLOAD_URL}")
        self._members[name] = found[0]

  def __str__(self) -> str:
    return str(self.archive if self.archive is not None else self.folder)

  def where(self, name: str) -> str:
    """How error messages name a file."""
    if self.archive is not None:
      return f"{self._members[name]} in {self.archive}"
    return str(self.folder / name)

  def read(self, name: str) -> str:
    """The file's text (latin-1, as GroupLens ships it; Windows newlines are
    accepted)."""
    if self.archive is not None:
      with zipfile.ZipFile(self.archive) as zf:
        data = zf.read(self._members[name])
    else:
      data = (self.folder / name).read_bytes()
    text = data.decode("latin-1")
    return text.replace("\r\n", "\n") if "\r" in text else text


def _has_files(folder: Path, variant: str) -> bool:
  return all((folder / name).is_file() for name in FILES[variant])


def _open_source(path: str | os.PathLike, variant: str) -> _Source:
  """Finds the files under `path`; FileNotFoundError says what is expected."""
  path = Path(path)
  folder_name = f"ml-{variant}"
  expected = ", ".join(FILES[variant])
  if path.is_file():
    if zipfile.is_zipfile(path):
      return _Source(variant, archive=path)
    raise FileNotFoundError(f"{path} is not a zip archive; pass the "
                            f"{folder_name} folder or {folder_name}.zip")
  if not path.is_dir():
    raise FileNotFoundError(
        f"MovieLens {variant.upper()} not found: {path} does not exist. "
        f"Expected a folder with {expected} (the extracted {folder_name}.zip), "
        f"a folder holding {folder_name}/ or {folder_name}.zip, or the .zip "
        f"itself; download it from {DOWNLOAD_URL}")
  if _has_files(path, variant):
    return _Source(variant, folder=path)
  if _has_files(path / folder_name, variant):
    return _Source(variant, folder=path / folder_name)
  if (path / f"{folder_name}.zip").is_file():
    return _Source(variant, archive=path / f"{folder_name}.zip")
  # Nothing complete: name the missing files of the likeliest folder.
  folder = path / folder_name if (path / folder_name).is_dir() else path
  missing = [n for n in FILES[variant] if not (folder / n).is_file()]
  other = next((v for v in FILES if v != variant
                and ((folder / FILES[v][0]).is_file()
                     or (path / f"ml-{v}").is_dir()
                     or (path / f"ml-{v}.zip").is_file())), None)
  hint = (f" It looks like MovieLens {other.upper()}; pass variant={other!r}."
          if other else "")
  raise FileNotFoundError(
      f"MovieLens {variant.upper()} not found in {folder}: missing "
      f"{', '.join(missing)} (expected {expected}, or {folder_name}/ or "
      f"{folder_name}.zip inside {path}).{hint} Download {folder_name}.zip "
      f"from {DOWNLOAD_URL} and extract it there, or pass the .zip.")


# ----------------------------------------------------------------------------
# Line parsing with errors that name the file, line and field.


def _fix(variant: str) -> str:
  return (f"Re-download ml-{variant}.zip from {DOWNLOAD_URL} and extract it "
          f"again (or pass the .zip).")


def _malformed(where: str, lineno: int, problem: str, variant: str,
               text: str = "") -> ValueError:
  truncated = ""
  if text and not text.endswith("\n") and lineno == text.count("\n") + 1:
    truncated = (" This is the last line and the file does not end with a "
                 "newline: the file looks truncated.")
  return ValueError(f"{where}, line {lineno}: {problem}.{truncated} "
                    f"{_fix(variant)}")


def _records(text: str, where: str, sep: str, fields: Sequence[str],
             variant: str) -> Iterator[tuple[int, list[str]]]:
  """(1-based line number, fields) of every non-blank line."""
  want = len(fields)
  for lineno, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    parts = line.split(sep)
    if len(parts) != want:
      raise _malformed(where, lineno,
                       f"expected {want} {sep!r}-separated fields "
                       f"({', '.join(fields)}), found {len(parts)}",
                       variant, text)
    yield lineno, parts


def _int_field(value: str, where: str, lineno: int, field: str,
               variant: str, text: str = "") -> int:
  try:
    return int(value)
  except ValueError:
    raise _malformed(where, lineno, f"field {field!r} is {value!r}, not an "
                     f"integer", variant, text) from None


def _line_of_row(text: str, row: int) -> int:
  """1-based line number of the row-th (0-based) non-blank line."""
  seen = -1
  for lineno, line in enumerate(text.split("\n"), 1):
    if line.strip():
      seen += 1
      if seen == row:
        return lineno
  return row + 1


def _parse_ints(text: str, where: str, sep: str, fields: Sequence[str],
                variant: str) -> np.ndarray:
  """int64 [rows, len(fields)]: np.loadtxt when the file is clean, else a
  line-by-line pass that raises the precise error."""
  fast = text.replace(sep, "\t") if sep != "\t" else text
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "input contained no data"
      table = np.loadtxt(io.StringIO(fast), delimiter="\t", dtype=np.int64,
                         comments=None, ndmin=2)
    if table.shape[0] == 0 or table.shape[1] == len(fields):
      return table.reshape(-1, len(fields))
  except ValueError:
    pass
  rows = [[_int_field(v, where, lineno, f, variant, text)
           for v, f in zip(parts, fields)]
          for lineno, parts in _records(text, where, sep, fields, variant)]
  return np.asarray(rows, dtype=np.int64).reshape(-1, len(fields))


def _check_count(found: int, expected: int, where: str, what: str,
                 variant: str) -> None:
  if found < expected:
    raise ValueError(
        f"{where}: truncated file: found {found:,} {what}, the official "
        f"MovieLens {variant.upper()} has {expected:,}. {_fix(variant)} For a "
        f"deliberately small file in this format pass strict_counts=False.")
  if found > expected:
    raise ValueError(
        f"{where}: found {found:,} {what}, more than the {expected:,} of the "
        f"official MovieLens {variant.upper()}; this is not the official "
        f"file. {_fix(variant)} For a custom file in this format pass "
        f"strict_counts=False.")


def _check_id(value: int, limit: int, where: str, lineno: int, field: str,
              variant: str, strict: bool) -> None:
  if value < 1 or value > limit:
    bound = (f"the official MovieLens {variant.upper()} uses 1..{limit}"
             if strict else f"ids must lie in 1..{limit:,}")
    raise _malformed(where, lineno,
                     f"{field} {value} is out of range ({bound})", variant)


def _check_new(seen: dict, value: int, where: str, lineno: int, field: str,
               variant: str) -> None:
  if value in seen:
    raise _malformed(where, lineno, f"{field} {value} is listed twice",
                     variant)


# ----------------------------------------------------------------------------
# Per-file readers.  Each returns plain dicts/lists; `read_movielens` builds
# the arrays and runs the cross-file checks.


def _read_ratings(src: _Source, variant: str, strict: bool
                  ) -> tuple[np.ndarray, str, str]:
  name = FILES[variant][0]
  where, text = src.where(name), src.read(name)
  sep = "\t" if variant == "100k" else "::"
  fields = ("user id", "item id", "rating", "timestamp")
  table = _parse_ints(text, where, sep, fields, variant)
  if strict:
    _check_count(table.shape[0], OFFICIAL[variant]["ratings"], where,
                 "ratings", variant)
  if table.shape[0] == 0:
    raise ValueError(f"{where} holds no ratings. {_fix(variant)}")
  limits = ((0, "user id", OFFICIAL[variant]["max_user"] if strict else MAX_ID),
            (1, "item id", OFFICIAL[variant]["max_item"] if strict else MAX_ID))
  for col, field, limit in limits:
    bad = np.flatnonzero((table[:, col] < 1) | (table[:, col] > limit))
    if bad.size:
      _check_id(int(table[bad[0], col]), limit, where,
                _line_of_row(text, int(bad[0])), field, variant, strict)
  bad = np.flatnonzero((table[:, 2] < 1) | (table[:, 2] > 5))
  if bad.size:
    raise _malformed(where, _line_of_row(text, int(bad[0])),
                     f"rating {table[bad[0], 2]} is out of range (ratings are "
                     f"whole stars 1..5)", variant)
  bad = np.flatnonzero(table[:, 3] < 0)
  if bad.size:
    raise _malformed(where, _line_of_row(text, int(bad[0])),
                     f"timestamp {table[bad[0], 3]} is negative", variant)
  return table, where, text


_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_RELEASE_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")


def _title_year(title: str) -> int:
  m = _YEAR_IN_TITLE.search(title)
  return int(m.group(1)) if m else 0


def _read_genres_100k(src: _Source) -> tuple[str, ...]:
  where, text = src.where("u.genre"), src.read("u.genre")
  names = []
  for lineno, (name, index) in _records(text, where, "|", ("name", "index"),
                                        "100k"):
    if _int_field(index, where, lineno, "index", "100k", text) != len(names):
      raise _malformed(where, lineno, f"genre {name!r} has index {index}, "
                       f"expected {len(names)} (indices run 0, 1, ... in "
                       f"file order)", "100k", text)
    names.append(name)
  if not names:
    raise ValueError(f"{where} lists no genres. {_fix('100k')}")
  return tuple(names)


def _read_items(src: _Source, variant: str, genres: tuple[str, ...],
                strict: bool) -> dict[int, tuple[str, int, list[int]]]:
  """item id -> (title, release year, genre column indices)."""
  items: dict[int, tuple[str, int, list[int]]] = {}
  limit = OFFICIAL[variant]["max_item"] if strict else MAX_ID
  if variant == "100k":
    where, text = src.where("u.item"), src.read("u.item")
    fields = ("movie id", "title", "release date", "video release date",
              "IMDb URL") + tuple(f"genre flag {g!r}" for g in genres)
    for lineno, parts in _records(text, where, "|", fields, variant):
      item = _int_field(parts[0], where, lineno, "movie id", variant, text)
      _check_id(item, limit, where, lineno, "movie id", variant, strict)
      _check_new(items, item, where, lineno, "movie id", variant)
      flags = parts[5:]
      if any(f not in ("0", "1") for f in flags):
        bad = next(i for i, f in enumerate(flags) if f not in ("0", "1"))
        raise _malformed(where, lineno, f"genre flag {genres[bad]!r} is "
                         f"{flags[bad]!r}, expected 0 or 1", variant, text)
      date = _RELEASE_DATE.match(parts[2].strip())
      year = int(date.group(1)) if date else _title_year(parts[1])
      items[item] = (parts[1], year, [i for i, f in enumerate(flags)
                                      if f == "1"])
  else:
    where, text = src.where("movies.dat"), src.read("movies.dat")
    index = {g: i for i, g in enumerate(genres)}
    for lineno, (movie, title, names) in _records(
        text, where, "::", ("MovieID", "Title", "Genres"), variant):
      item = _int_field(movie, where, lineno, "MovieID", variant, text)
      _check_id(item, limit, where, lineno, "MovieID", variant, strict)
      _check_new(items, item, where, lineno, "MovieID", variant)
      cols = []
      for g in names.strip().split("|") if names.strip() else []:
        if g not in index:
          raise _malformed(where, lineno, f"unknown genre {g!r} (known: "
                           f"{', '.join(genres)})", variant, text)
        cols.append(index[g])
      items[item] = (title, _title_year(title), sorted(set(cols)))
  if strict:
    _check_count(len(items), OFFICIAL[variant]["items"], where, "movies",
                 variant)
  if not items:
    raise ValueError(f"{where} lists no movies. {_fix(variant)}")
  return items


def _zip_bucket(code: str) -> int:
  code = code.strip()
  if not code:
    return 0
  return int(code[0]) + 1 if code[0] in "0123456789" else len(ZIP_BUCKETS)


UserRow = tuple[int, int, int, int]  # gender, age, occupation, zip ids


def _read_users(src: _Source, variant: str, strict: bool
                ) -> tuple[dict[int, UserRow], tuple[str, ...]]:
  """user id -> (gender, age, occupation, zip) ids; occupation names."""
  users: dict[int, UserRow] = {}
  limit = OFFICIAL[variant]["max_user"] if strict else MAX_ID
  gender_ids = {g: i + 1 for i, g in enumerate(GENDERS)}
  if variant == "100k":
    where_o, text_o = src.where("u.occupation"), src.read("u.occupation")
    occupations = tuple(line.strip() for line in text_o.split("\n")
                        if line.strip())
    if not occupations:
      raise ValueError(f"{where_o} lists no occupations. {_fix(variant)}")
    occ_ids = {o: i + 1 for i, o in enumerate(occupations)}
    name, sep = "u.user", "|"
    fields = ("user id", "age", "gender", "occupation", "zip code")
  else:
    occupations = OCCUPATIONS_1M
    name, sep = "users.dat", "::"
    fields = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
  where, text = src.where(name), src.read(name)
  for lineno, parts in _records(text, where, sep, fields, variant):
    user = _int_field(parts[0], where, lineno, fields[0], variant, text)
    _check_id(user, limit, where, lineno, fields[0], variant, strict)
    _check_new(users, user, where, lineno, fields[0], variant)
    if variant == "100k":
      _, age_s, gender, occupation, zip_code = parts
      age = _int_field(age_s, where, lineno, "age", variant, text)
      if not 0 <= age <= 150:
        raise _malformed(where, lineno, f"age {age} is not an age in years",
                         variant, text)
      if occupation not in occ_ids:
        raise _malformed(where, lineno, f"occupation {occupation!r} is not "
                         f"listed in u.occupation", variant, text)
      occ = occ_ids[occupation]
    else:
      _, gender, age_s, occ_s, zip_code = parts
      age = _int_field(age_s, where, lineno, "Age", variant, text)
      if age not in AGE_CODES_1M:
        raise _malformed(where, lineno, f"Age code {age} is not one of "
                         f"{AGE_CODES_1M}", variant, text)
      occ = _int_field(occ_s, where, lineno, "Occupation", variant, text) + 1
      if not 1 <= occ <= len(OCCUPATIONS_1M):
        raise _malformed(where, lineno, f"Occupation code {occ - 1} is not "
                         f"in 0..{len(OCCUPATIONS_1M) - 1}", variant, text)
    if gender not in gender_ids:
      raise _malformed(where, lineno, f"gender {gender!r} is not 'M' or 'F'",
                       variant, text)
    age_id = bisect.bisect_right(AGE_EDGES, age) + 1
    users[user] = (gender_ids[gender], age_id, occ, _zip_bucket(zip_code))
  if strict:
    _check_count(len(users), OFFICIAL[variant]["users"], where, "users",
                 variant)
  if not users:
    raise ValueError(f"{where} lists no users. {_fix(variant)}")
  return users, occupations


def read_movielens(path: str | os.PathLike, variant: str = "100k", *,
                   strict_counts: bool = True) -> MovieLensRaw:
  """Parses MovieLens 100K or 1M from a folder or the official .zip.

  `path` may be the extracted folder (ml-100k/), a folder holding ml-100k/ or
  ml-100k.zip (e.g. $MTREC_DATA_DIR), or the .zip itself; zip members are
  read in place.  With `strict_counts` (the default) the row counts and id
  ranges of the official release are enforced, so a truncated download fails
  loudly; pass False for small files in the same format (tests, subsets).

  Raises:
    FileNotFoundError: the files are not there (says what is expected).
    ValueError: a malformed or inconsistent file (names the file, the 1-based
      line and the problem, and how to fix it).
  """
  variant = normalize_variant(variant)
  strict = bool(strict_counts)
  src = _open_source(path, variant)
  genres = _read_genres_100k(src) if variant == "100k" else GENRES_1M
  table, where, text = _read_ratings(src, variant, strict)
  items = _read_items(src, variant, genres, strict)
  users, occupations = _read_users(src, variant, strict)

  num_items, num_users = max(items), max(users)
  item_genres = np.zeros((num_items + 1, len(genres)), np.uint8)
  item_year = np.zeros(num_items + 1, np.int32)
  item_listed = np.zeros(num_items + 1, bool)
  titles = [""] * (num_items + 1)
  for item, (title, year, cols) in items.items():
    item_genres[item, cols] = 1
    item_year[item] = year
    item_listed[item] = True
    titles[item] = title
  user_table = np.zeros((num_users + 1, 4), np.int32)
  user_listed = np.zeros(num_users + 1, bool)
  for user, feats in users.items():
    user_table[user] = feats
    user_listed[user] = True

  # Cross-file references: every rated item / rating user must be listed.
  for col, known, field, other in (
      (1, item_listed, "item id", FILES[variant][1]),
      (0, user_listed, "user id", FILES[variant][2])):
    ids = table[:, col]
    bad = np.flatnonzero((ids > len(known) - 1)
                         | ~known[np.minimum(ids, len(known) - 1)])
    if bad.size:
      raise _malformed(where, _line_of_row(text, int(bad[0])),
                       f"{field} {ids[bad[0]]} is not listed in {other}",
                       variant)

  return MovieLensRaw(
      variant=variant, source=str(src),
      user=table[:, 0].astype(np.int32), item=table[:, 1].astype(np.int32),
      rating=table[:, 2].astype(np.int32), timestamp=table[:, 3].copy(),
      item_genres=item_genres, item_year=item_year, item_titles=tuple(titles),
      item_listed=item_listed, user_listed=user_listed,
      user_gender=user_table[:, 0].copy(), user_age=user_table[:, 1].copy(),
      user_occupation=user_table[:, 2].copy(),
      user_zip=user_table[:, 3].copy(), genre_names=tuple(genres),
      occupation_names=tuple(occupations))


# ----------------------------------------------------------------------------
# The sequential dataset.


def year_bucket(year: np.ndarray) -> np.ndarray:
  """Release year -> YEAR_BUCKETS id (0 for unknown year 0)."""
  year = np.asarray(year)
  return np.where(year > 0, np.digitize(year, YEAR_EDGES) + 1,
                  0).astype(np.int32)


def _windows(values: np.ndarray, start: np.ndarray, end: np.ndarray,
             width: int, left: bool) -> np.ndarray:
  """[N, width] of values[start:end] per row, 0-padded: `left` keeps the
  last `width` values right-aligned (padding first), else the first `width`
  values left-aligned."""
  offsets = np.arange(width)
  idx = (end[:, None] - width + offsets) if left else (start[:, None] + offsets)
  valid = (idx >= start[:, None]) & (idx < end[:, None])
  return np.where(valid, values[np.where(valid, idx, 0)], 0).astype(
      values.dtype)


TRAIN_EXAMPLES = ("prefixes", "sequences")

# The cold-start split (`cold_start_items`): the held-out items are drawn
# with this fixed seed, not the run's, so every run seed is evaluated on the
# same items (paired runs).
COLD_START_SEED = 0
COLD_START_KEY = "data.cold_start_items"
COLD_START_RULE = (
    "Candidates: the distinct test targets of the users kept by "
    "min_interactions (the last interaction of each). Held out: "
    "round(fraction x candidates) of them (at least 1), drawn without "
    "replacement by numpy default_rng(0), the same for every run seed. Every "
    "interaction with a held-out item is removed before the split except a "
    "user's last one (the test target), so a held-out item is never a "
    "training or validation input, target, seq_targets entry, rating/like/"
    "genre label, popularity count or validation exclusion (which "
    "next_all's 'unseen' sampler reads); the split then runs on what is "
    "left, so a validation target that was held out is replaced by the "
    "user's previous remaining interaction. Test rows keep their targets; "
    "their inputs lack the held-out items; their 'exclude' lists stay the "
    "user's full past, held-out items included (read only by the test "
    "metrics: already-seen items are not ranked, as without the split). "
    "Users left with fewer than min_interactions are dropped.")


def check_cold_start_items(value: Any) -> float:
  """`value` as a fraction in [0, 1); ValueError naming the key otherwise."""
  ok = (isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool))
  if ok and 0.0 <= float(value) < 1.0:
    return float(value)
  raise ValueError(
      f"{COLD_START_KEY} must be a fraction in [0, 1) of the items that are "
      f"some user's test target (0 = no cold-start split), got {value!r}")


def cold_start_choice(test_targets: np.ndarray, fraction: float,
                      seed: int = COLD_START_SEED) -> np.ndarray:
  """Sorted item ids held out of training: round(fraction x the distinct
  `test_targets`) of them (at least 1 for fraction > 0), drawn by
  default_rng(seed); empty for fraction 0."""
  fraction = check_cold_start_items(fraction)
  candidates = np.unique(np.asarray(test_targets))
  if fraction == 0.0 or candidates.size == 0:
    return np.zeros(0, np.int32)
  count = max(1, int(round(fraction * candidates.size)))
  chosen = np.random.default_rng(seed).choice(candidates, count,
                                              replace=False)
  return np.sort(chosen).astype(np.int32)


def _hold_out_items(raw: MovieLensRaw, order: np.ndarray, fraction: float
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(held-out item ids, `order` without their interactions but each
  user's last); `order` is sorted by user first (see COLD_START_RULE)."""
  user = raw.user[order]
  last = np.ones(order.size, bool)
  last[:-1] = user[1:] != user[:-1]
  held = cold_start_choice(raw.item[order][last], fraction)
  is_held = np.zeros(raw.num_items + 1, bool)
  is_held[held] = True
  return held, order[~is_held[raw.item[order]] | last]


def movielens_dataset(raw: MovieLensRaw, *, max_len: int = 50,
                      min_interactions: int = 3, embed_dim: int = 16,
                      name: Optional[str] = None,
                      train_examples: str = "prefixes",
                      cold_start_items: float = 0.0) -> Dataset:
  """Leave-one-out next-item examples with rating, like and genre labels.

  Split (`SPLIT_RULE`): per user, interactions sorted by (timestamp, item
  id); the last is the test target, the second-last the validation target,
  the rest the training history.  Training examples: each history position
  t >= 1 is a target whose input is the (at most) `max_len` history items
  before it (sliding prefixes, as in SASRec / GRU4Rec training).
  With ``train_examples='sequences'`` the training split keeps only each
  user's longest prefix (one row per user: the last `max_len` history items
  before the last one, whose `seq_targets` are the items that follow each
  position), the input of all-positions training as in SASRec and
  BERT4Rec; every target then appears once, at its own position.
  Validation: input = the last `max_len` training-history items.  Test:
  input = training history + the validation item (last `max_len`).  Hence no
  target is ever in its own input window, and no validation or test
  interaction appears in any training example (as input or target); the test
  input does contain the validation item, which is in the user's past by then.
  Users with fewer than `min_interactions` (>= 3) interactions are dropped
  and counted in info['dropped_users']; ML-100K and ML-1M have >= 20 per user,
  so none are.  The split uses no randomness.

  Cold-start split (``cold_start_items`` > 0, a fraction; 0, the default,
  leaves everything above as it is): a fixed set of items, chosen among the
  test targets with a fixed seed, is held out of training entirely; their
  interactions are removed before the split but where they are a user's
  test target (`COLD_START_RULE`).  The held-out ids, their test rows and
  what was removed are in info['cold_start'] (absent when off).

  Columns (N examples of the split, L = max_len, G = genres):
    'user', 'gender', 'age', 'occupation', 'zip'  int32 [N] categorical ids
        (0 = padding; vocabularies in info['vocab']; user attributes are
        inputs, never labels, so fitting them on the whole user file is fine)
    'hist_items'   int32 [N, L], LEFT-padded with 0, most recent at L - 1
    'hist_ratings' float32 [N, L] stars 1..5 of 'hist_items', 0.0 at padding
    'hist_len'     int32 [N] non-padding length of the window
    'target_item'  int32 [N] item id in 1..num_items; label of 'next_item'
    'seq_targets'  int32 [N, L] the item that follows each position of
        'hist_items' (0 at padding); its last entry is 'target_item'.  The
        labels of all-positions next-item training (`tasks.auxiliary`).
    'cand_item'    int32 [N] == 'target_item', the candidate item INPUT of
        'rating' and 'like'.  The 'next_item' and 'genre' towers must not
        read it (it is their answer).
    'rating'       float32 [N] stars of the target interaction (regression)
    'like'         float32 [N] 1.0 if rating >= 4 (binary)
    'target_genres' float32 [N, G] multi-hot genres of the target (multilabel)
    'exclude'      int32 [N, M] val/test only: every item the user interacted
        with before the target (full history, not just the last L), in time
        order, RIGHT-padded with 0; M = the longest in the split.  For
        full-ranking metrics.  Omitted from train, where it would cost
        N x M (~100k x 735 ints for ML-100K) and is not needed.

  Tasks: 'next_item' multiclass over num_items + 1 classes (class 0 is
  padding, never a target), 'rating' regression, 'like' binary, 'genre'
  multilabel; a config may select a subset.
  """
  if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) \
      or max_len < 1:
    raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
  if isinstance(min_interactions, bool) or not isinstance(
      min_interactions, (int, np.integer)) or min_interactions < 3:
    raise ValueError(f"min_interactions must be an int >= 3 (a user needs a "
                     f"history, a validation and a test item), got "
                     f"{min_interactions!r}")
  max_len = int(max_len)
  if train_examples not in TRAIN_EXAMPLES:
    raise ValueError(f"train_examples must be one of {TRAIN_EXAMPLES}, got "
                     f"{train_examples!r}")
  cold_fraction = check_cold_start_items(cold_start_items)

  order = np.lexsort((raw.item, raw.timestamp, raw.user))
  counts = np.bincount(raw.user, minlength=raw.num_users + 1)
  kept_users = counts >= min_interactions
  dropped = int(np.count_nonzero((counts > 0) & ~kept_users))
  order = order[kept_users[raw.user[order]]]
  if order.size == 0:
    raise ValueError(f"no user has >= {min_interactions} interactions in "
                     f"{raw.source}; lower min_interactions (>= 3) or use "
                     f"more data")
  full_order = order  # before the cold-start removal: test exclusions
  cold_info: dict[str, Any] = {}
  if cold_fraction > 0:
    held, order = _hold_out_items(raw, order, cold_fraction)
    counts = np.bincount(raw.user[order], minlength=raw.num_users + 1)
    still = counts >= min_interactions
    cold_info = {
        "fraction": cold_fraction, "seed": COLD_START_SEED,
        "rule": COLD_START_RULE, "items": held.tolist(),
        "removed_interactions": int(full_order.size - order.size),
        "dropped_users": int(np.count_nonzero(kept_users & ~still))}
    kept_users &= still
    order = order[kept_users[raw.user[order]]]
    if order.size == 0:
      raise ValueError(f"{COLD_START_KEY}={cold_fraction} leaves no user "
                       f"with >= {min_interactions} interactions in "
                       f"{raw.source}; lower it")
  user, item = raw.user[order], raw.item[order]
  rating = raw.rating[order].astype(np.float32)
  kept_counts = np.where(kept_users, counts, 0)
  user_start = np.cumsum(kept_counts) - kept_counts  # first row of each user
  start = user_start[user]  # per interaction
  pos = np.arange(user.size) - start
  length = kept_counts[user]
  in_history = pos < length - 2
  targets = {"train": np.flatnonzero(in_history & (pos >= 1)),
             "val": np.flatnonzero(pos == length - 2),
             "test": np.flatnonzero(pos == length - 1)}
  if train_examples == "sequences":  # each user's last history position
    targets["train"] = np.flatnonzero(in_history & (pos >= 1)
                                      & (pos == length - 3))

  splits = {}
  for split, g in targets.items():
    s = start[g]
    u = user[g]
    target = item[g]
    columns = {
        "user": u.astype(np.int32),
        "gender": raw.user_gender[u],
        "age": raw.user_age[u],
        "occupation": raw.user_occupation[u],
        "zip": raw.user_zip[u],
        "hist_items": _windows(item, s, g, max_len, left=True),
        "hist_ratings": _windows(rating, s, g, max_len, left=True),
        "hist_len": np.minimum(g - s, max_len).astype(np.int32),
        "target_item": target.astype(np.int32),
        "seq_targets": _windows(item, s + 1, g + 1, max_len, left=True),
        "cand_item": target.astype(np.int32),
        "rating": rating[g],
        "like": (rating[g] >= LIKE_THRESHOLD).astype(np.float32),
        "target_genres": raw.item_genres[target].astype(np.float32),
    }
    if split == "test" and cold_info:  # the full past (COLD_START_RULE)
      full_items = raw.item[full_order]
      full_counts = np.bincount(raw.user[full_order],
                                minlength=raw.num_users + 1)
      s_full = (np.cumsum(full_counts) - full_counts)[u]
      g_full = s_full + full_counts[u] - 1
      width = int((g_full - s_full).max()) if g.size else 0
      columns["exclude"] = _windows(full_items, s_full, g_full, width,
                                    left=False)
    elif split != "train":
      width = int((g - s).max()) if g.size else 0
      columns["exclude"] = _windows(item, s, g, width, left=False)
    splits[split] = {k: np.ascontiguousarray(v) for k, v in columns.items()}

  num_items, num_users = raw.num_items, raw.num_users
  features = (
      FeatureSpec("user", "categorical", vocab_size=num_users + 1,
                  embed_dim=embed_dim),
      FeatureSpec("gender", "categorical", vocab_size=len(GENDERS) + 1,
                  embed_dim=embed_dim),
      FeatureSpec("age", "categorical", vocab_size=len(AGE_BUCKETS) + 1,
                  embed_dim=embed_dim),
      FeatureSpec("occupation", "categorical",
                  vocab_size=len(raw.occupation_names) + 1,
                  embed_dim=embed_dim),
      FeatureSpec("zip", "categorical", vocab_size=len(ZIP_BUCKETS) + 1,
                  embed_dim=embed_dim),
      FeatureSpec("hist_items", "sequence", vocab_size=num_items + 1,
                  max_len=max_len, embed_dim=embed_dim),
      FeatureSpec("cand_item", "categorical", vocab_size=num_items + 1,
                  share_with="hist_items", embed_dim=embed_dim),
  )
  tasks = (
      TaskSpec("next_item", "target_item", "multiclass",
               num_classes=num_items + 1, metrics=NEXT_ITEM_METRICS,
               exclude="exclude"),
      TaskSpec("rating", "rating", "regression", metrics=("rmse", "mae")),
      TaskSpec("like", "like", "binary", metrics=("auc", "logloss")),
      TaskSpec("genre", "target_genres", "multilabel",
               num_classes=raw.num_genres),
  )
  train_items = item[in_history]
  info: dict[str, Any] = {
      "source": "MovieLens " + raw.variant.upper(),
      "paper": "Harper and Konstan, ACM TiiS 2015 (MovieLens datasets)",
      "variant": raw.variant,
      "counts": raw.counts(),
      "num_ratings": raw.num_ratings,
      "num_users": int(np.count_nonzero(kept_users)),
      "num_items": num_items,
      "num_genres": raw.num_genres,
      "dropped_users": dropped,
      "min_interactions": int(min_interactions),
      "examples": {k: int(v.size) for k, v in targets.items()},
      "max_len": max_len,
      "like_threshold": LIKE_THRESHOLD,
      "split_rule": SPLIT_RULE,
      "train_examples": train_examples,
      "genre_names": list(raw.genre_names),
      "vocab": {"gender": list(GENDERS), "age": list(AGE_BUCKETS),
                "occupation": list(raw.occupation_names),
                "zip": list(ZIP_BUCKETS)},
      # Interactions in the training histories (val/test targets excluded),
      # indexed by item id, for a popularity baseline.
      "item_popularity": np.bincount(
          train_items, minlength=num_items + 1).tolist(),
      "num_train_interactions": int(train_items.size),
      # Item metadata by item id (entry 0 = padding), for auxiliary tasks.
      "item_genre_ids": [np.flatnonzero(row).tolist()
                         for row in raw.item_genres],
      "item_year": raw.item_year.tolist(),
      "item_year_bucket": year_bucket(raw.item_year).tolist(),
      "year_buckets": list(YEAR_BUCKETS),
  }
  if cold_info:
    is_held = np.zeros(num_items + 1, bool)
    is_held[cold_info["items"]] = True
    cold_info["test_rows"] = int(np.count_nonzero(
        is_held[splits["test"]["target_item"]]))
    info["cold_start"] = cold_info
  return Dataset(name=name or f"movielens_{raw.variant}", splits=splits,
                 features=features, tasks=tasks, info=info)


def load_movielens(path: Optional[str | os.PathLike] = None, *,
                   variant: str = "100k", max_len: int = 50,
                   min_interactions: int = 3, embed_dim: int = 16,
                   strict_counts: bool = True,
                   train_examples: str = "prefixes",
                   cold_start_items: float = 0.0,
                   seed: Optional[int] = None) -> Dataset:
  """`read_movielens` then `movielens_dataset`.

  `path` defaults to $MTREC_DATA_DIR (which holds ml-100k/ or ml-100k.zip).
  `seed` is accepted for the registry's calling convention and unused: the
  split (the cold-start choice included) is deterministic.
  """
  del seed
  if path is None:
    path = os.environ.get(DATA_DIR_ENV)
    if not path:
      folder = f"ml-{normalize_variant(variant)}"
      raise FileNotFoundError(
          f"no MovieLens path given and ${DATA_DIR_ENV} is unset; set "
          f"{DATA_DIR_ENV} to the folder holding {folder}/ (or {folder}.zip), "
          f"or pass path=")
  raw = read_movielens(path, variant, strict_counts=strict_counts)
  return movielens_dataset(raw, max_len=max_len,
                           min_interactions=min_interactions,
                           embed_dim=embed_dim, train_examples=train_examples,
                           cold_start_items=cold_start_items)
