"""UCI Census-Income (KDD) reader: splits, train-only fitting, labels, errors.

Small files in the official format are generated here; every row carries a
unique instance weight (1000.5 + its 0-based row number), so a split's rows
can be traced back to the file and checked against the documented rules.
"""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from mtrec_jax.data import census
from mtrec_jax.registry import UnknownNameError

COLS = census.COLUMN_IDS
POOLS: dict[str, list[str]] = {
    "class_of_worker": ["Not in universe", "Private", "Local government",
                        "Self-employed-not incorporated", "State government"],
    "detailed_industry_recode": ["0", "4", "33", "37", "43"],
    "detailed_occupation_recode": ["0", "2", "26", "29", "34"],
    "education": list(census.EDUCATION_VALUES),
    "enroll_in_edu_inst_last_wk": ["Not in universe", "High school",
                                   "College or university"],
    "marital_stat": list(census.MARITAL_VALUES),
    "major_industry_code": ["Not in universe or children", "Retail trade",
                            "Manufacturing-durable goods", "Education"],
    "major_occupation_code": ["Not in universe", "Professional specialty",
                              "Adm support including clerical", "Sales"],
    "race": ["White", "Black", "Asian or Pacific Islander", "Other"],
    "hispanic_origin": ["All other", "Mexican-American", "Puerto Rican"],
    "sex": ["Female", "Male"],
    "member_of_a_labor_union": ["Not in universe", "No", "Yes"],
    "reason_for_unemployment": ["Not in universe", "Job loser - on layoff",
                                "New entrant"],
    "full_or_part_time_employment_stat": ["Children or Armed Forces",
                                          "Full-time schedules",
                                          "Not in labor force"],
    "tax_filer_stat": ["Nonfiler", "Joint both under 65", "Single"],
    "region_of_previous_residence": ["Not in universe", "South", "West"],
    "state_of_previous_residence": ["Not in universe", "California", "?"],
    "detailed_household_and_family_stat": [
        "Householder", "Spouse of householder",
        "Child <18 never marr not in subfamily"],
    "detailed_household_summary_in_household": [
        "Householder", "Spouse of householder",
        "Child under 18 never married"],
    "migration_code_change_in_msa": ["Nonmover", "?", "MSA to MSA"],
    "migration_code_change_in_reg": ["Nonmover", "?", "Same county"],
    "migration_code_move_within_reg": ["Nonmover", "?", "Same county"],
    "live_in_this_house_1_year_ago": ["Not in universe under 1 year old",
                                      "Yes", "No"],
    "migration_prev_res_in_sunbelt": ["?", "Not in universe", "No", "Yes"],
    "family_members_under_18": ["Not in universe", "Both parents present",
                                "Mother only present"],
    "country_of_birth_father": ["United-States", "Mexico", "Philippines"],
    "country_of_birth_mother": ["United-States", "Mexico", "Philippines"],
    "country_of_birth_self": ["United-States", "Mexico", "Philippines"],
    "citizenship": ["Native- Born in the United States",
                    "Foreign born- Not a citizen of U S ",
                    "Foreign born- U S citizen by naturalization"],
    "own_business_or_self_employed": ["0", "1", "2"],
    "fill_inc_questionnaire_for_veterans_admin": ["Not in universe", "No",
                                                  "Yes"],
    "veterans_benefits": ["0", "1", "2"],
    "year": ["94", "95"],
    "income": ["- 50000.", "- 50000.", "- 50000.", "50000+."],
}


def make_rows(n: int, seed: int = 0, start: int = 0) -> list[list[str]]:
  """n rows of 42 realistic field strings; row i weighs 1000.5 + start + i."""
  rng = np.random.default_rng(seed)
  rows = []

  def sparse(high: int) -> str:  # mostly 0, like the money columns
    return str(int(rng.integers(1, high))) if rng.random() < 0.1 else "0"

  for i in range(n):
    numbers = {
        "age": str(int(rng.integers(0, 91))),
        "wage_per_hour": sparse(2000),
        "capital_gains": sparse(99999),
        "capital_losses": sparse(4000),
        "dividends_from_stocks": sparse(20000),
        "num_persons_worked_for_employer": str(int(rng.integers(0, 7))),
        "weeks_worked_in_year": str(int(rng.integers(0, 53))),
        "instance_weight": f"{1000.5 + start + i:.2f}",
    }
    rows.append([numbers[c] if c in numbers else
                 POOLS[c][int(rng.integers(len(POOLS[c])))] for c in COLS])
  return rows


def write(path, rows: list[list[str]], *, extra: str = "") -> str:
  """Writes rows as the official files do (', ' between fields)."""
  text = "".join(", ".join(r) + "\n" for r in rows) + extra
  path = os.fspath(path)
  if path.endswith(".gz"):
    with gzip.open(path, "wt", encoding="latin-1") as f:
      f.write(text)
  else:
    with open(path, "w", encoding="latin-1") as f:
      f.write(text)
  return path


def row_ids(columns: dict[str, np.ndarray]) -> np.ndarray:
  """The 0-based row numbers a split holds, read back from the weights."""
  return np.rint(columns["instance_weight"] - 1000.5).astype(np.int64)


def raw(rows: list[list[str]], column: str) -> list[str]:
  return [r[COLS.index(column)].strip() for r in rows]


@pytest.fixture
def test_only(tmp_path):
  rows = make_rows(300)
  write(tmp_path / "census-income.test.gz", rows)
  return tmp_path, rows


@pytest.fixture
def train_and_test(tmp_path):
  train = make_rows(240, seed=1)
  test = make_rows(101, seed=2, start=10000)
  write(tmp_path / "census-income.data", train)
  write(tmp_path / "census-income.test.gz", test)
  return tmp_path, train, test


# ----------------------------------------------------------------------------
# Column layout.


def test_columns_follow_the_official_layout():
  assert census.NUM_FIELDS == 42 and len(set(COLS)) == 42
  assert COLS[24] == "instance_weight" and census.COLUMNS[24][2] == "MARSUPWT"
  assert COLS[-1] == "income" and COLS[0] == "age"
  assert all(c.isidentifier() and c == c.lower() for c in COLS)
  assert set(census.NUMERIC_COLUMNS) <= set(COLS)
  assert len(census.NUMERIC_COLUMNS) == 7


# ----------------------------------------------------------------------------
# Splits.


def test_test_file_only_uses_the_exact_60_20_20_rule(test_only):
  data_dir, rows = test_only
  ds = census.load_census_income(data_dir)
  n = len(rows)
  perm = np.random.default_rng(0).permutation(n)
  want = {"train": perm[:int(0.6 * n)],
          "val": perm[int(0.6 * n):int(0.8 * n)],
          "test": perm[int(0.8 * n):]}
  assert ds.info["split_rule"] == "single_file_60_20_20"
  assert ds.info["source_files"] == [
      os.path.join(data_dir, "census-income.test.gz")]
  for split, idx in want.items():
    np.testing.assert_array_equal(row_ids(ds.splits[split]), idx)
    assert ds.info["num_examples"][split] == len(idx)
  income = np.array([v == "50000+." for v in raw(rows, "income")], float)
  marital = np.array([v == "Never married" for v in raw(rows, "marital_stat")],
                     float)
  for split, idx in want.items():
    np.testing.assert_array_equal(ds.splits[split]["income"], income[idx])
    np.testing.assert_array_equal(ds.splits[split]["marital"], marital[idx])
    assert ds.info["positive_rates"][split]["income"] == pytest.approx(
        income[idx].mean())


def test_train_file_is_train_and_test_file_is_halved(train_and_test):
  data_dir, train, test = train_and_test
  ds = census.load_census_income(data_dir)
  assert ds.info["split_rule"] == "official_train_test_halves"
  np.testing.assert_array_equal(row_ids(ds.splits["train"]),
                                np.arange(len(train)))
  n = len(test)
  perm = np.random.default_rng(0).permutation(n)
  np.testing.assert_array_equal(row_ids(ds.splits["val"]) - 10000,
                                perm[:n // 2])
  np.testing.assert_array_equal(row_ids(ds.splits["test"]) - 10000,
                                perm[n // 2:])
  assert ds.info["num_examples"] == {"train": 240, "val": 50, "test": 51}
  assert len(ds.info["source_files"]) == 2


def test_train_file_alone_uses_the_60_20_20_rule(tmp_path):
  rows = make_rows(50)
  write(tmp_path / "census-income.data.gz", rows)
  ds = census.load_census_income(tmp_path)
  perm = np.random.default_rng(0).permutation(50)
  assert ds.info["split_rule"] == "single_file_60_20_20"
  np.testing.assert_array_equal(row_ids(ds.splits["train"]), perm[:30])


# ----------------------------------------------------------------------------
# Fitting on train only.


def test_vocabulary_comes_from_train_only(train_and_test):
  data_dir, train, test = train_and_test
  test = [list(r) for r in test]
  test[0][COLS.index("country_of_birth_self")] = " Atlantis"
  write(data_dir / "census-income.test.gz", test)
  ds = census.load_census_income(data_dir)
  vocab = ds.info["vocabularies"]["country_of_birth_self"]
  train_values = sorted(set(raw(train, "country_of_birth_self")))
  assert vocab == train_values and "Atlantis" not in vocab
  spec = {f.name: f for f in ds.features}["country_of_birth_self"]
  assert spec.vocab_size == len(vocab) + 2
  assert ds.info["vocab_sizes"]["country_of_birth_self"] == spec.vocab_size
  for split in ("val", "test"):
    cols = ds.splits[split]
    ids, where = cols["country_of_birth_self"], row_ids(cols) - 10000
    np.testing.assert_array_equal(ids == 1, where == 0)
  train_ids = ds.splits["train"]["country_of_birth_self"]
  expected = [vocab.index(v) + 2 for v in raw(train, "country_of_birth_self")]
  np.testing.assert_array_equal(train_ids, expected)
  for split, cols in ds.splits.items():
    for f in ds.features:
      if f.kind == "categorical":
        assert cols[f.name].dtype == np.int32
        assert cols[f.name].min() >= 1 and cols[f.name].max() < f.vocab_size


def test_value_seen_only_outside_train_rows_is_oov(tmp_path):
  rows = make_rows(100)
  perm = np.random.default_rng(0).permutation(100)
  val_row = int(perm[60])  # first val row under the 60/20/20 rule
  rows[val_row][COLS.index("race")] = "Martian"
  write(tmp_path / "census-income.test", rows)
  ds = census.load_census_income(tmp_path)
  assert "Martian" not in ds.info["vocabularies"]["race"]
  assert ds.splits["val"]["race"][0] == 1
  assert (ds.splits["train"]["race"] >= 2).all()


def test_standardisation_uses_train_statistics(train_and_test):
  data_dir, train, test = train_and_test
  train = [list(r) for r in train]
  for r in train:  # constant in train: std 0 -> 1
    r[COLS.index("num_persons_worked_for_employer")] = "3"
  write(data_dir / "census-income.data", train)
  ds = census.load_census_income(data_dir)
  numeric = census.NUMERIC_COLUMNS
  x_train = np.array([[float(v) for v in raw(train, c)] for c in numeric]).T
  x_test = np.array([[float(v) for v in raw(test, c)] for c in numeric]).T
  mean, std = x_train.mean(0), x_train.std(0)
  std[numeric.index("num_persons_worked_for_employer")] = 1.0
  assert list(ds.info["numeric_mean"]) == list(numeric)
  np.testing.assert_allclose(list(ds.info["numeric_mean"].values()), mean)
  np.testing.assert_allclose(list(ds.info["numeric_std"].values()), std)
  for split, x in (("train", x_train), ("val", x_test), ("test", x_test)):
    cols = ds.splits[split]
    ids = row_ids(cols) - (0 if split == "train" else 10000)
    assert cols["numeric"].dtype == np.float32
    assert cols["numeric"].shape == (len(ids), 7)
    np.testing.assert_allclose(cols["numeric"], (x[ids] - mean) / std,
                               rtol=1e-5, atol=1e-5)
  assert np.abs(ds.splits["train"]["numeric"].mean(0)).max() < 1e-5


# ----------------------------------------------------------------------------
# Features, tasks and the two task pairs.


@pytest.mark.parametrize("pair,tasks,excluded", [
    ("income_marital", ("income", "marital"), {"income", "marital_stat"}),
    ("education_marital", ("education", "marital"),
     {"income", "marital_stat", "education"}),
])
def test_features_exclude_labels_and_weight(test_only, pair, tasks, excluded):
  data_dir, _ = test_only
  ds = census.load_census_income(data_dir, task_pair=pair, embed_dim=3)
  names = [f.name for f in ds.features]
  categorical = [c for c in COLS if c not in excluded
                 and c not in census.NUMERIC_COLUMNS
                 and c != "instance_weight"]
  assert names == categorical + ["numeric"]
  assert "instance_weight" not in names
  assert not set(names) & excluded
  numeric = ds.features[-1]
  assert numeric.kind == "numeric" and numeric.dim == 7
  assert all(f.embed_dim == 3 for f in ds.features[:-1])
  assert ds.task_names == tasks
  for t in ds.tasks:
    assert t.head == "binary" and t.label == t.name
    assert t.metrics == ("auc", "logloss")
  assert ds.info["task_pair"] == pair
  for cols in ds.splits.values():
    for key in (*tasks, "instance_weight"):
      assert cols[key].dtype == np.float32 and cols[key].ndim == 1
    assert set(cols) == set(names) | set(tasks) | {"instance_weight"}


def test_education_task_is_bachelors_or_higher(test_only):
  data_dir, rows = test_only
  ds = census.load_census_income(data_dir, task_pair="education_marital")
  positive = {"Bachelors degree(BA AB BS)",
              "Masters degree(MA MS MEng MEd MSW MBA)",
              "Prof school degree (MD DDS DVM LLB JD)",
              "Doctorate degree(PhD EdD)"}
  education = np.array([v in positive for v in raw(rows, "education")], float)
  for cols in ds.splits.values():
    np.testing.assert_array_equal(cols["education"], education[row_ids(cols)])
  assert "bachelor" in ds.info["education_definition"]
  assert "bachelor" in ds.info["tasks"]["education"]
  assert "Some college but no degree" not in census.EDUCATION_POSITIVE
  assert "Associates degree-academic program" not in census.EDUCATION_POSITIVE


def test_whitespace_around_fields_is_stripped(tmp_path):
  rows = make_rows(60)
  for i, r in enumerate(rows):
    r[COLS.index("sex")] = "Male  " if i % 2 else "Male"
    r[COLS.index("income")] = "  - 50000. "
    r[COLS.index("age")] = " 40 "
  write(tmp_path / "census-income.test", rows)
  ds = census.load_census_income(tmp_path)
  assert ds.info["vocabularies"]["sex"] == ["Male"]
  assert (ds.splits["train"]["sex"] == 2).all()
  assert ds.info["numeric_mean"]["age"] == 40.0


def test_deterministic_and_gzip_equals_plain(tmp_path):
  rows = make_rows(120)
  (tmp_path / "gz").mkdir()
  (tmp_path / "plain").mkdir()
  write(tmp_path / "gz" / "census-income.test.gz", rows)
  write(tmp_path / "plain" / "census-income.test", rows, extra="\n\n")
  a = census.load_census_income(tmp_path / "gz")
  b = census.load_census_income(tmp_path / "gz")
  c = census.load_census_income(tmp_path / "plain")
  for other in (b, c):
    for split in a.splits:
      assert a.splits[split].keys() == other.splits[split].keys()
      for key in a.splits[split]:
        np.testing.assert_array_equal(a.splits[split][key],
                                      other.splits[split][key])
  assert a.features == c.features
  drop = lambda info: {k: v for k, v in info.items() if k != "source_files"}
  assert drop(a.info) == drop(c.info)


# ----------------------------------------------------------------------------
# Errors.


def test_missing_files_name_directory_files_and_source(tmp_path):
  for where in (tmp_path, tmp_path / "nowhere"):
    with pytest.raises(FileNotFoundError) as e:
      census.load_census_income(where)
    msg = str(e.value)
    assert os.fspath(where) in msg
    assert "census-income.data" in msg and "census-income.test" in msg
    assert "https://archive.ics.uci.edu/dataset/117/census+income+kdd" in msg


def _error(tmp_path, rows, *, extra: str = "", name="census-income.test"):
  path = write(tmp_path / name, rows, extra=extra)
  with pytest.raises(ValueError) as e:
    census.load_census_income(tmp_path)
  return path, str(e.value)


def test_wrong_field_count_names_file_line_and_column(tmp_path):
  rows = make_rows(20)
  rows[6] = rows[6][:-1]
  path, msg = _error(tmp_path, rows)
  assert path in msg and "line 7" in msg and "'income'" in msg
  assert "expected 42" in msg and "got 41" in msg and "re-download" in msg


def test_line_numbers_count_blank_lines(tmp_path):
  rows = make_rows(5)
  bad = ", ".join(rows[0] + ["extra"])
  path = write(tmp_path / "census-income.test", rows,
               extra="\n" + bad + "\n")
  with pytest.raises(ValueError, match="line 7.*got 43"):
    census.load_census_income(tmp_path)
  assert path


def test_empty_file(tmp_path):
  path, msg = _error(tmp_path, [], extra="\n  \n")
  assert path in msg and "line 1" in msg and "empty" in msg
  assert "42" in msg and "re-download" in msg


def test_non_numeric_continuous_value(tmp_path):
  rows = make_rows(20)
  rows[11][COLS.index("capital_gains")] = "12k"
  path, msg = _error(tmp_path, rows)
  assert path in msg and "line 12" in msg and "'capital_gains'" in msg
  assert "expected a finite number" in msg and "'12k'" in msg

  rows = make_rows(20)
  rows[3][COLS.index("instance_weight")] = "?"
  path, msg = _error(tmp_path, rows)
  assert "line 4" in msg and "'instance_weight'" in msg


@pytest.mark.parametrize("column,value,pair", [
    ("income", "50000+", "income_marital"),
    ("marital_stat", "Engaged", "income_marital"),
    ("education", "Kindergarten", "education_marital"),
])
def test_unknown_label_value(tmp_path, column, value, pair):
  rows = make_rows(30)
  rows[17][COLS.index(column)] = value
  path = write(tmp_path / "census-income.test", rows)
  with pytest.raises(ValueError) as e:
    census.load_census_income(tmp_path, task_pair=pair)
  msg = str(e.value)
  assert path in msg and "line 18" in msg and repr(column) in msg
  assert repr(value) in msg and "expected one of" in msg


def test_unknown_education_is_fine_when_it_is_a_feature(tmp_path):
  rows = make_rows(30)
  rows[0][COLS.index("education")] = "Kindergarten"
  write(tmp_path / "census-income.test", rows)
  census.load_census_income(tmp_path, task_pair="income_marital")


def test_truncated_gzip_says_re_download(tmp_path):
  path = write(tmp_path / "census-income.test.gz", make_rows(200))
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError) as e:
    census.load_census_income(tmp_path)
  assert path in str(e.value) and "re-download" in str(e.value)
  with open(path, "wb") as f:
    f.write(b"this is not gzip data at all")
  with pytest.raises(ValueError, match="re-download"):
    census.load_census_income(tmp_path)


def test_bad_arguments(test_only):
  data_dir, _ = test_only
  with pytest.raises(UnknownNameError, match="income_marital"):
    census.load_census_income(data_dir, task_pair="income_maritial")
  with pytest.raises(ValueError, match="embed_dim"):
    census.load_census_income(data_dir, embed_dim=0)


# ----------------------------------------------------------------------------
# The real file (skipped unless MTREC_DATA_DIR is set; fails if it is set but
# the files are missing).


def test_real_census_income():
  root = os.environ.get("MTREC_DATA_DIR")
  if not root:
    pytest.skip("set MTREC_DATA_DIR to the folder holding census-income/")
  data_dir = os.path.join(root, "census-income")
  ds = census.load_census_income(data_dir)
  counts = ds.info["num_examples"]
  n = sum(counts.values())
  if ds.info["split_rule"] == "single_file_60_20_20":
    assert n == 99762  # the official test file
    assert counts == {"train": int(0.6 * n),
                      "val": int(0.8 * n) - int(0.6 * n),
                      "test": n - int(0.8 * n)}
  else:
    assert counts["train"] == 199523
    assert counts["val"] + counts["test"] == 99762
  for split, rates in ds.info["positive_rates"].items():
    assert 0.05 < rates["income"] < 0.075, (split, rates)
    assert 0.38 < rates["marital"] < 0.48, (split, rates)
  ds = census.load_census_income(data_dir, task_pair="education_marital")
  for split, rates in ds.info["positive_rates"].items():
    assert 0.12 < rates["education"] < 0.18, (split, rates)
