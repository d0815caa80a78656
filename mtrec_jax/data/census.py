"""UCI Census-Income (KDD), the real-data benchmark of the MMoE paper.

Ma et al., KDD 2018, sec. 5.2 train two-task models on this US census extract
(1994/95 Current Population Surveys): either (income > 50K, never married) or
(education at least college, never married).  This module is a pure-NumPy
reader of the official files into a `Dataset`; it downloads nothing.

Files (from https://archive.ics.uci.edu/dataset/117/census+income+kdd), plain
or gzip: `census-income.data` (199,523 training rows) and/or
`census-income.test` (99,762 rows).  Each line holds 42 comma-separated fields
in the order of `COLUMNS`: 40 attributes, the instance weight MARSUPWT as
field 25 (0-based 24) and the income label last.  Whitespace around fields is
stripped; '?' (UCI's "missing") is kept as an ordinary categorical value.

Splits (`info['split_rule']` records which was used):
  * 'official_train_test_halves': `census-income.data` present -> train is
    that file in file order; the test file is halved, as in the MMoE paper:
    perm = numpy.random.default_rng(0).permutation(n_test), val =
    perm[:n_test // 2], test = perm[n_test // 2:].
  * 'single_file_60_20_20': only one file present -> perm =
    numpy.random.default_rng(0).permutation(n) over its rows in file order,
    train = perm[:int(0.6 n)], val = perm[int(0.6 n):int(0.8 n)], test =
    perm[int(0.8 n):].  (The usual case for us: only the test file.)
Rows of val/test (and of every split under the 60/20/20 rule) appear in
permutation order.

Preprocessing is fitted on train only, so val/test never leak into it:
categorical vocabularies are the sorted train values, with id 0 reserved for
padding, 1 for values unseen in train (OOV) and 2.. for known values;
continuous features are standardised with the train mean and (population)
std, a zero std being replaced by 1.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import os
import zlib
from typing import Any, Sequence

import numpy as np

from mtrec_jax.data.dataset import Dataset
from mtrec_jax.registry import UnknownNameError, unknown_name_message
from mtrec_jax.specs import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec

URL = "https://archive.ics.uci.edu/dataset/117/census+income+kdd"
TRAIN_FILE = "census-income.data"
TEST_FILE = "census-income.test"

# (snake_case column id, name in census-income.names, UCI code), file order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("age", "age", "AAGE"),
    ("class_of_worker", "class of worker", "ACLSWKR"),
    ("detailed_industry_recode", "detailed industry recode", "ADTIND"),
    ("detailed_occupation_recode", "detailed occupation recode", "ADTOCC"),
    ("education", "education", "AHGA"),
    ("wage_per_hour", "wage per hour", "AHRSPAY"),
    ("enroll_in_edu_inst_last_wk", "enroll in edu inst last wk", "AHSCOL"),
    ("marital_stat", "marital stat", "AMARITL"),
    ("major_industry_code", "major industry code", "AMJIND"),
    ("major_occupation_code", "major occupation code", "AMJOCC"),
    ("race", "race", "ARACE"),
    ("hispanic_origin", "hispanic origin", "AREORGN"),
    ("sex", "sex", "ASEX"),
    ("member_of_a_labor_union", "member of a labor union", "AUNMEM"),
    ("reason_for_unemployment", "reason for unemployment", "AUNTYPE"),
    ("full_or_part_time_employment_stat",
     "full or part time employment stat", "AWKSTAT"),
    ("capital_gains", "capital gains", "CAPGAIN"),
    ("capital_losses", "capital losses", "CAPLOSS"),
    ("dividends_from_stocks", "dividends from stocks", "DIVVAL"),
    ("tax_filer_stat", "tax filer stat", "FILESTAT"),
    ("region_of_previous_residence", "region of previous residence",
     "GRINREG"),
    ("state_of_previous_residence", "state of previous residence", "GRINST"),
    ("detailed_household_and_family_stat",
     "detailed household and family stat", "HHDFMX"),
    ("detailed_household_summary_in_household",
     "detailed household summary in household", "HHDREL"),
    ("instance_weight", "instance weight", "MARSUPWT"),
    ("migration_code_change_in_msa", "migration code-change in msa",
     "MIGMTR1"),
    ("migration_code_change_in_reg", "migration code-change in reg",
     "MIGMTR3"),
    ("migration_code_move_within_reg", "migration code-move within reg",
     "MIGMTR4"),
    ("live_in_this_house_1_year_ago", "live in this house 1 year ago",
     "MIGSAME"),
    ("migration_prev_res_in_sunbelt", "migration prev res in sunbelt",
     "MIGSUN"),
    ("num_persons_worked_for_employer", "num persons worked for employer",
     "NOEMP"),
    ("family_members_under_18", "family members under 18", "PARENT"),
    ("country_of_birth_father", "country of birth father", "PEFNTVTY"),
    ("country_of_birth_mother", "country of birth mother", "PEMNTVTY"),
    ("country_of_birth_self", "country of birth self", "PENATVTY"),
    ("citizenship", "citizenship", "PRCITSHP"),
    ("own_business_or_self_employed", "own business or self employed",
     "SEOTR"),
    ("fill_inc_questionnaire_for_veterans_admin",
     "fill inc questionnaire for veteran's admin", "VETQVA"),
    ("veterans_benefits", "veterans benefits", "VETYN"),
    ("weeks_worked_in_year", "weeks worked in year", "WKSWORK"),
    ("year", "year", "YEAR"),
    ("income", "income (label)", "income"),
)
COLUMN_IDS = tuple(c[0] for c in COLUMNS)
NUM_FIELDS = len(COLUMNS)  # 42
WEIGHT_COLUMN = "instance_weight"
# The 7 continuous attributes, in file order; they form the 'numeric' feature.
NUMERIC_COLUMNS = ("age", "wage_per_hour", "capital_gains", "capital_losses",
                   "dividends_from_stocks", "num_persons_worked_for_employer",
                   "weeks_worked_in_year")

INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}
MARITAL_VALUES = ("Divorced", "Married-A F spouse present",
                  "Married-civilian spouse present", "Married-spouse absent",
                  "Never married", "Separated", "Widowed")
MARITAL_POSITIVE = ("Never married",)
EDUCATION_VALUES = (
    "Children", "Less than 1st grade", "1st 2nd 3rd or 4th grade",
    "5th or 6th grade", "7th and 8th grade", "9th grade", "10th grade",
    "11th grade", "12th grade no diploma", "High school graduate",
    "Some college but no degree", "Associates degree-occup /vocational",
    "Associates degree-academic program", "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)", "Doctorate degree(PhD EdD)")
# "At least college" read as a completed bachelor's degree or higher; some
# college without a degree and associate degrees count as negatives.
EDUCATION_POSITIVE = ("Bachelors degree(BA AB BS)",
                      "Masters degree(MA MS MEng MEd MSW MBA)",
                      "Prof school degree (MD DDS DVM LLB JD)",
                      "Doctorate degree(PhD EdD)")
EDUCATION_DEFINITION = ("education is a bachelor's degree or higher "
                        "(Bachelors, Masters, Prof school or Doctorate)")

# task name -> (source column, {value: label}, definition for `info`).
_TASK_SOURCES: dict[str, tuple[str, dict[str, float], str]] = {
    "income": ("income", INCOME_VALUES,
               "income label is '50000+.' (more than $50K)"),
    "marital": ("marital_stat",
                {v: float(v in MARITAL_POSITIVE) for v in MARITAL_VALUES},
                "marital stat is 'Never married'"),
    "education": ("education",
                  {v: float(v in EDUCATION_POSITIVE)
                   for v in EDUCATION_VALUES},
                  EDUCATION_DEFINITION),
}
TASK_PAIRS: dict[str, tuple[str, str]] = {
    "income_marital": ("income", "marital"),
    "education_marital": ("education", "marital"),
}
TASK_METRICS = ("auc", "logloss")

SPLIT_SEED = 0


def _fix_hint() -> str:
  return f"re-download the file from {URL}"


# ----------------------------------------------------------------------------
# Reading one file.


@dataclasses.dataclass
class _Column:
  """A factorised text column: row codes into the stripped distinct values."""
  codes: np.ndarray
  values: list[str]


def _factorize(raw: Sequence[str]) -> _Column:
  """Codes per row and stripped distinct values (few per column, so strip
  and validate those instead of every cell)."""
  index = {v: i for i, v in enumerate(dict.fromkeys(raw))}
  codes = np.fromiter(map(index.__getitem__, raw), dtype=np.int64,
                      count=len(raw))
  stripped: dict[str, int] = {}
  remap = np.array([stripped.setdefault(v.strip(), len(stripped))
                    for v in index], dtype=np.int64)
  return _Column(remap[codes], list(stripped))


def _read_text(path: str) -> str:
  """The file's text; gzip is chosen by the '.gz' suffix."""
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      with open(path, "rb") as f:
        data = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{path}: the gzip file is truncated or corrupt "
                     f"({type(e).__name__}: {e}); {_fix_hint()}") from e
  # Latin-1 decodes any byte, so a damaged file fails below with a line number
  # rather than here with a byte offset.
  return data.decode("latin-1")


@dataclasses.dataclass
class _File:
  """One parsed data file: its columns and the 1-based line of each row."""
  path: str
  columns: dict[str, _Column]
  line_numbers: np.ndarray

  @property
  def num_rows(self) -> int:
    return len(self.line_numbers)

  def where(self, row: int, column: str) -> str:
    pos = COLUMN_IDS.index(column)
    return (f"{self.path} line {int(self.line_numbers[row])}, column "
            f"{pos + 1} {column!r} ({COLUMNS[pos][1]})")

  def first_row_with(self, column: str, bad_codes: np.ndarray) -> int:
    return int(np.argmax(np.isin(self.columns[column].codes, bad_codes)))


def _raise_field_count(path: str, line: int, got: int) -> None:
  if got < NUM_FIELDS:
    what = (f"column {got + 1} {COLUMN_IDS[got]!r} and those after it are "
            f"missing")
  else:
    what = (f"{got - NUM_FIELDS} extra field(s) after column {NUM_FIELDS} "
            f"'income'")
  raise ValueError(
      f"{path} line {line}: expected {NUM_FIELDS} comma-separated fields (40 "
      f"attributes, the instance weight as field 25, the income label last), "
      f"got {got}: {what}. The file may be truncated or not the "
      f"Census-Income (KDD) data; {_fix_hint()}")


def _parse_file(path: str, label_columns: Sequence[str]) -> _File:
  """Splits, field-count checks and validates the label values of one file."""
  lines = _read_text(path).splitlines()
  kept = [i for i, line in enumerate(lines) if line.strip()]
  if not kept:
    raise ValueError(
        f"{path} line 1: the file is empty; expected lines of {NUM_FIELDS} "
        f"comma-separated fields (age, class of worker, ..., income); "
        f"{_fix_hint()}")
  if len(kept) != len(lines):
    lines = [lines[i] for i in kept]
  line_numbers = np.asarray(kept, dtype=np.int64) + 1
  for i, line in enumerate(lines):
    if line.count(",") != NUM_FIELDS - 1:
      _raise_field_count(path, int(line_numbers[i]), line.count(",") + 1)
  # One split of the whole text, then every 42nd field is one column.
  fields = ",".join(lines).split(",")
  del lines
  columns = {name: _factorize(fields[j::NUM_FIELDS])
             for j, name in enumerate(COLUMN_IDS)}
  del fields
  parsed = _File(path, columns, line_numbers)
  for name in label_columns:
    col = columns[name]
    allowed = _TASK_SOURCES[_task_of_column(name)][1]
    bad = [i for i, v in enumerate(col.values) if v not in allowed]
    if bad:
      row = parsed.first_row_with(name, np.asarray(bad))
      raise ValueError(
          f"{parsed.where(row, name)}: unknown label value "
          f"{col.values[col.codes[row]]!r}; expected one of "
          f"{sorted(allowed)}. Check that the file is the Census-Income "
          f"(KDD) data in the official column order, or {_fix_hint()}")
  return parsed


def _task_of_column(column: str) -> str:
  return next(t for t, src in _TASK_SOURCES.items() if src[0] == column)


def _numbers(parsed: _File, column: str) -> np.ndarray:
  """float64 [N] of a continuous column; a non-number names its line."""
  col = parsed.columns[column]
  values = np.empty(len(col.values), dtype=np.float64)
  bad = []
  for i, text in enumerate(col.values):
    try:
      values[i] = float(text)
    except ValueError:
      values[i] = math.nan
    if not math.isfinite(values[i]):
      bad.append(i)
  if bad:
    row = parsed.first_row_with(column, np.asarray(bad))
    raise ValueError(
        f"{parsed.where(row, column)}: expected a finite number (a continuous "
        f"column), got {col.values[col.codes[row]]!r}. Check the file's "
        f"column order against census-income.names, or {_fix_hint()}")
  return values[col.codes]


def _labels(parsed: _File, column: str) -> np.ndarray:
  col = parsed.columns[column]
  mapping = _TASK_SOURCES[_task_of_column(column)][1]
  return np.asarray([mapping[v] for v in col.values], np.float64)[col.codes]


# ----------------------------------------------------------------------------
# Locating files and splitting.


def _find(data_dir: str, name: str) -> str | None:
  """Path of `name` or `name`.gz in data_dir (the plain file wins if both)."""
  for candidate in (name, name + ".gz"):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  return None


def single_file_split(n: int) -> dict[str, np.ndarray]:
  """Row indices of the 60/20/20 rule for a lone file of n rows."""
  perm = np.random.default_rng(SPLIT_SEED).permutation(n)
  a, b = int(0.6 * n), int(0.8 * n)
  return {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}


def test_file_halves(n: int) -> dict[str, np.ndarray]:
  """Row indices of the val/test halves of the official test file."""
  perm = np.random.default_rng(SPLIT_SEED).permutation(n)
  return {"val": perm[:n // 2], "test": perm[n // 2:]}


# ----------------------------------------------------------------------------
# The builder.


def load_census_income(data_dir: str | os.PathLike, *,
                       task_pair: str = "income_marital",
                       embed_dim: int = 4) -> Dataset:
  """Reads UCI Census-Income (KDD) into a two-task binary `Dataset`.

  Args:
    data_dir: folder holding census-income.data(.gz) and/or
      census-income.test(.gz).
    task_pair: 'income_marital' (tasks 'income': income > $50K, and
      'marital': never married) or 'education_marital' ('education': a
      bachelor's degree or higher, i.e. Bachelors, Masters, Prof school or
      Doctorate; some college or an associate degree is 0).
    embed_dim: embedding width of every categorical feature (small, as in the
      MMoE paper's setup).

  Returns a Dataset with, per split:
    one int32 [N] column per categorical attribute (named by its `COLUMNS`
    id, e.g. 'class_of_worker'); 'numeric' float32 [N, 7], the standardised
    `NUMERIC_COLUMNS`; float32 [N] 0/1 labels named after the two tasks;
    'instance_weight' float32 [N] (MARSUPWT, for weighted metrics; not a
    feature).  The income label, marital stat and (for 'education_marital')
    education column are never features.

  Raises:
    FileNotFoundError: neither file is in data_dir.
    ValueError: a malformed line (the message names file, line and column),
      an empty file or a truncated gzip.
  """
  if task_pair not in TASK_PAIRS:
    raise UnknownNameError(unknown_name_message("census task pair", task_pair,
                                                TASK_PAIRS))
  if (isinstance(embed_dim, bool) or not isinstance(embed_dim, int)
      or embed_dim < 1):
    raise ValueError(f"embed_dim must be an int >= 1, got {embed_dim!r}")
  data_dir = os.fspath(data_dir)
  task_names = TASK_PAIRS[task_pair]
  label_columns = tuple(dict.fromkeys(
      ["income"] + [_TASK_SOURCES[t][0] for t in task_names]))
  excluded = set(label_columns) | {WEIGHT_COLUMN}
  categorical = tuple(c for c in COLUMN_IDS
                      if c not in excluded and c not in NUMERIC_COLUMNS)

  train_path, test_path = _find(data_dir, TRAIN_FILE), _find(data_dir,
                                                             TEST_FILE)
  if train_path is None and test_path is None:
    where = (f"in {data_dir!r}" if os.path.isdir(data_dir)
             else f"because the directory {data_dir!r} does not exist")
    raise FileNotFoundError(
        f"no Census-Income (KDD) data found {where}: expected "
        f"{TRAIN_FILE} or {TRAIN_FILE}.gz (official train) and/or "
        f"{TEST_FILE} or {TEST_FILE}.gz (official test). Download the data "
        f"set from {URL}, unpack it and put census-income.data.gz and/or "
        f"census-income.test.gz (gzip or plain) into that directory.")

  # split -> (parsed file, row indices into it); each split has one source.
  if train_path is not None and test_path is not None:
    split_rule = "official_train_test_halves"
    train_file = _parse_file(train_path, label_columns)
    test_file = _parse_file(test_path, label_columns)
    halves = test_file_halves(test_file.num_rows)
    sources = {"train": (train_file, np.arange(train_file.num_rows)),
               "val": (test_file, halves["val"]),
               "test": (test_file, halves["test"])}
  else:
    split_rule = "single_file_60_20_20"
    only = _parse_file(train_path or test_path, label_columns)
    if int(0.6 * only.num_rows) < 1:
      raise ValueError(
          f"{only.path}: {only.num_rows} row(s) leave the 60% train split "
          f"empty; use the full file (or add {TRAIN_FILE} for training)")
    sources = {s: (only, idx)
               for s, idx in single_file_split(only.num_rows).items()}

  # Decode the numbers once per file, then fit on train only.
  numbers = {}
  for parsed, _ in sources.values():
    if parsed.path not in numbers:
      numbers[parsed.path] = {
          "numeric": np.stack([_numbers(parsed, c) for c in NUMERIC_COLUMNS],
                              axis=1),
          WEIGHT_COLUMN: _numbers(parsed, WEIGHT_COLUMN)}
  train_file, train_rows = sources["train"]
  train_numeric = numbers[train_file.path]["numeric"][train_rows]
  mean = train_numeric.mean(axis=0)
  std = train_numeric.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  vocabularies = {}
  for name in categorical:
    col = train_file.columns[name]
    vocabularies[name] = sorted(col.values[c]
                                for c in np.unique(col.codes[train_rows]))

  splits: dict[str, dict[str, np.ndarray]] = {}
  for split, (parsed, rows) in sources.items():
    columns: dict[str, np.ndarray] = {}
    for name in categorical:
      ids = {v: i + 2 for i, v in enumerate(vocabularies[name])}
      col = parsed.columns[name]
      # Distinct value -> id, 1 (OOV) for values unseen in train.
      table = np.asarray([ids.get(v, 1) for v in col.values], np.int32)
      columns[name] = table[col.codes[rows]]
    file_numbers = numbers[parsed.path]
    columns["numeric"] = ((file_numbers["numeric"][rows] - mean) / std
                          ).astype(np.float32)
    for task in task_names:
      columns[task] = _labels(parsed, _TASK_SOURCES[task][0])[rows].astype(
          np.float32)
    columns[WEIGHT_COLUMN] = file_numbers[WEIGHT_COLUMN][rows].astype(
        np.float32)
    splits[split] = columns

  features = tuple(FeatureSpec(name, "categorical",
                               vocab_size=len(vocabularies[name]) + 2,
                               embed_dim=embed_dim) for name in categorical)
  features += (FeatureSpec("numeric", "numeric", dim=len(NUMERIC_COLUMNS)),)
  tasks = tuple(TaskSpec(name=t, label=t, head="binary", metrics=TASK_METRICS)
                for t in task_names)
  files = list(dict.fromkeys(parsed.path for parsed, _ in sources.values()))
  info = _info(splits, task_names, split_rule, files, vocabularies, mean,
               std, task_pair)
  return Dataset(name="census_income", splits=splits, features=features,
                 tasks=tasks, info=info)


def _info(splits: dict[str, dict[str, np.ndarray]], task_names: Sequence[str],
          split_rule: str, files: list[str], vocabularies: dict[str, list[str]],
          mean: np.ndarray, std: np.ndarray, task_pair: str) -> dict[str, Any]:
  """JSON-friendly facts: sizes, rule, sources, label rates and the fit."""

  def rate(labels: np.ndarray,
           weights: np.ndarray | None = None) -> float | None:
    if not len(labels):
      return None
    w = np.ones_like(labels, np.float64) if weights is None else weights
    return float(np.sum(labels * w, dtype=np.float64) /
                 np.sum(w, dtype=np.float64))

  return {
      "paper": "Ma et al., KDD 2018, sec. 5.2 (MMoE, UCI Census-Income)",
      "url": URL,
      "task_pair": task_pair,
      "tasks": {t: _TASK_SOURCES[t][2] for t in task_names},
      "education_definition": EDUCATION_DEFINITION,
      "split_rule": split_rule,
      "split_seed": SPLIT_SEED,
      "source_files": files,
      "num_examples": {s: int(len(c[WEIGHT_COLUMN]))
                       for s, c in splits.items()},
      "positive_rates": {s: {t: rate(c[t].astype(np.float64))
                             for t in task_names}
                         for s, c in splits.items()},
      "weighted_positive_rates": {
          s: {t: rate(c[t].astype(np.float64),
                      c[WEIGHT_COLUMN].astype(np.float64))
              for t in task_names} for s, c in splits.items()},
      "vocab_sizes": {n: len(v) + 2 for n, v in vocabularies.items()},
      "vocabularies": {n: list(v) for n, v in vocabularies.items()},
      "id_offset": 2,
      "oov_id": 1,
      "numeric_columns": list(NUMERIC_COLUMNS),
      "numeric_mean": {n: float(m) for n, m in zip(NUMERIC_COLUMNS, mean)},
      "numeric_std": {n: float(s) for n, s in zip(NUMERIC_COLUMNS, std)},
  }
