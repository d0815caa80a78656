"""MovieLens readers and the leave-one-out split, on tiny official-format files.

The real ML-100K is checked when $MTREC_DATA_DIR is set (the test fails, not
skips, if the variable is set but the data is missing).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mtrec_jax.data import movielens as ml
from mtrec_jax.data.dataset import Dataset

GENRES = ("unknown", "Action", "Comedy")
OCCUPATIONS = ("engineer", "student", "writer")
# id: (title, release date, genre flags)
ITEMS = {
    1: ("Alpha (1995)", "01-Jan-1995", (0, 1, 0)),
    2: ("Beta (1977)", "", (0, 0, 1)),
    3: ("Caf\xe9 Gamma (1960)", "12-Mar-1961", (0, 1, 1)),
    4: ("unknown", "", (1, 0, 0)),
    5: ("Epsilon (1939)", "4-Feb-1939", (0, 1, 0)),
    6: ("Zeta (1998)", "01-Jan-1998", (0, 0, 1)),
    7: ("Eta (1985)", "01-Jan-1985", (0, 1, 1)),
    8: ("Theta (2001)", "01-Jan-2001", (0, 0, 0)),
}
# id: (age, gender, occupation, zip)
USERS = {1: (17, "M", "student", "T8H1N"), 2: (30, "F", "engineer", "94043"),
         3: (56, "M", "writer", "10001"), 4: (45, "F", "writer", "")}
# (user, item, rating, timestamp), deliberately not in time order.
# User 1 sorted by (time, item): 5@100, 2@200, 3@200 (tie: item 2 first),
#   7@300, 1@400, 4@500 -> test 4, val 1, history [5, 2, 3, 7].
# User 2: 6@1000, 8@1000, 1@1100, 2@1200 -> test 2, val 1, history [6, 8].
# User 3: two interactions -> dropped.  User 4: no ratings at all.
RATINGS = [(1, 7, 1, 300), (2, 1, 4, 1100), (1, 3, 2, 200), (1, 4, 3, 500),
           (3, 1, 5, 50), (2, 8, 2, 1000), (1, 5, 4, 100), (1, 2, 5, 200),
           (2, 2, 3, 1200), (3, 2, 1, 60), (1, 1, 4, 400), (2, 6, 5, 1000)]


def write_100k(folder: Path, ratings=RATINGS, items=ITEMS, users=USERS,
               genres=GENRES) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "u.data").write_text(
      "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
  (folder / "u.item").write_bytes("".join(
      f"{i}|{title}|{date}||http://us.imdb.com/M/title-exact?x|"
      + "|".join(map(str, flags)) + "\n"
      for i, (title, date, flags) in items.items()).encode("latin-1"))
  (folder / "u.user").write_text("".join(
      f"{u}|{age}|{g}|{occ}|{z}\n" for u, (age, g, occ, z) in users.items()))
  (folder / "u.genre").write_text(
      "".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
  (folder / "u.occupation").write_text("\n".join(OCCUPATIONS) + "\n")
  return folder


def write_1m(folder: Path) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "ratings.dat").write_text(
      "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
  # Sparse movie ids, as in ML-1M: 9 is listed but never rated.
  movies = {i: (title, [g for g, f in zip(GENRES[1:], flags[1:]) if f])
            for i, (title, _, flags) in ITEMS.items()}
  movies[9] = ("Iota (2000)", ["Action"])
  (folder / "movies.dat").write_bytes("".join(
      f"{i}::{title}::{'|'.join(gs)}\n"
      for i, (title, gs) in movies.items()).encode("latin-1"))
  (folder / "users.dat").write_text(
      "1::M::1::10::T8H1N\n2::F::25::0::94043-1234\n3::M::56::20::10001\n"
      "4::F::45::7::55455\n")
  return folder


def zip_folder(folder: Path, archive: Path) -> Path:
  with zipfile.ZipFile(archive, "w") as zf:
    for f in sorted(folder.iterdir()):
      zf.write(f, f"{folder.name}/{f.name}")
  return archive


@pytest.fixture
def folder(tmp_path) -> Path:
  return write_100k(tmp_path / "ml-100k")


def build(folder: Path, max_len: int = 3, **kwargs) -> Dataset:
  raw = ml.read_movielens(folder, "100k", strict_counts=False)
  return ml.movielens_dataset(raw, max_len=max_len, **kwargs)


def rows_of(columns: dict, user: int) -> dict:
  keep = columns["user"] == user
  return {k: v[keep] for k, v in columns.items()}


# ----------------------------------------------------------------------------
# Parsing.


def test_parse_100k_folder(folder):
  raw = ml.read_movielens(folder, strict_counts=False)
  assert raw.num_ratings == len(RATINGS)
  assert raw.num_users == 4 and raw.num_items == 8
  assert raw.genre_names == GENRES
  np.testing.assert_array_equal(raw.user, [r[0] for r in RATINGS])
  np.testing.assert_array_equal(raw.item, [r[1] for r in RATINGS])
  np.testing.assert_array_equal(raw.rating, [r[2] for r in RATINGS])
  np.testing.assert_array_equal(raw.timestamp, [r[3] for r in RATINGS])
  assert raw.item_genres.shape == (9, 3) and not raw.item_genres[0].any()
  np.testing.assert_array_equal(raw.item_genres[3], [0, 1, 1])
  # Release date wins over the title; an empty date falls back to the title.
  assert raw.item_year.tolist() == [0, 1995, 1977, 1961, 0, 1939, 1998, 1985,
                                    2001]
  assert raw.item_titles[3] == "Caf\xe9 Gamma (1960)"  # latin-1 decoded
  assert raw.user_gender.tolist() == [0, 1, 2, 1, 2]
  assert raw.user_age.tolist() == [0, 1, 3, 7, 5]  # <18, 25-34, 56+, 45-49
  assert raw.user_occupation.tolist() == [0, 2, 1, 3, 3]
  assert raw.user_zip.tolist() == [0, 11, 10, 2, 0]  # letter, 9, 1, empty
  assert raw.counts()["users_in_file"] == 4
  assert raw.counts()["users_with_ratings"] == 3


def assert_same_raw(a: ml.MovieLensRaw, b: ml.MovieLensRaw):
  for field in ("user", "item", "rating", "timestamp", "item_genres",
                "item_year", "user_gender", "user_age", "user_occupation",
                "user_zip"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.genre_names == b.genre_names and a.item_titles == b.item_titles


def test_zip_archive_and_data_root_read_the_same(tmp_path, folder):
  ref = ml.read_movielens(folder, strict_counts=False)
  zips = tmp_path / "zips"
  zips.mkdir()
  archive = zip_folder(folder, zips / "ml-100k.zip")
  for path in (tmp_path, zips, archive):  # root with ml-100k/, dir with .zip
    raw = ml.read_movielens(path, "ml-100k", strict_counts=False)
    assert_same_raw(raw, ref)
  assert ml.read_movielens(archive, strict_counts=False).source == str(archive)


def test_parse_1m_format_and_zip(tmp_path):
  folder = write_1m(tmp_path / "ml-1m")
  raw = ml.read_movielens(folder, "1m", strict_counts=False)
  assert raw.genre_names == ml.GENRES_1M
  assert raw.num_items == 9 and raw.item_listed.sum() == 8 + 1
  assert raw.counts()["items_rated"] == 8
  action, comedy = ml.GENRES_1M.index("Action"), ml.GENRES_1M.index("Comedy")
  assert np.flatnonzero(raw.item_genres[3]).tolist() == [action, comedy]
  assert raw.item_year[[2, 3, 9]].tolist() == [1977, 1960, 2000]  # from title
  assert raw.user_age.tolist() == [0, 1, 3, 7, 5]
  assert raw.user_occupation.tolist() == [0, 11, 1, 21, 8]  # code + 1
  assert raw.user_zip.tolist() == [0, 11, 10, 2, 6]
  np.testing.assert_array_equal(raw.rating, [r[2] for r in RATINGS])
  archive = zip_folder(folder, tmp_path / "ml-1m.zip")
  assert_same_raw(ml.read_movielens(archive, "1M", strict_counts=False), raw)
  ds = ml.movielens_dataset(raw, max_len=3)
  assert ds.name == "movielens_1m"
  assert ds.info["examples"] == {"train": 4, "val": 2, "test": 2}
  assert ds.tasks[0].num_classes == 10


def test_windows_line_endings_are_accepted(tmp_path, folder):
  data = (folder / "u.data").read_text()
  (folder / "u.data").write_bytes(data.replace("\n", "\r\n").encode())
  raw = ml.read_movielens(folder, strict_counts=False)
  assert raw.num_ratings == len(RATINGS)


# ----------------------------------------------------------------------------
# The split rule.


def test_split_rule_on_hand_made_user(folder):
  ds = build(folder, max_len=3)
  train = rows_of(ds.splits["train"], 1)
  # Targets: history positions t >= 1; ties at t=200 ordered by item id.
  assert train["target_item"].tolist() == [2, 3, 7]
  assert train["hist_items"].tolist() == [[0, 0, 5], [0, 5, 2], [5, 2, 3]]
  assert train["hist_ratings"].tolist() == [[0, 0, 4], [0, 4, 5], [4, 5, 2]]
  assert train["hist_len"].tolist() == [1, 2, 3]
  assert train["rating"].tolist() == [5, 2, 1]
  assert train["like"].tolist() == [1, 0, 0]
  np.testing.assert_array_equal(train["cand_item"], train["target_item"])
  np.testing.assert_array_equal(train["target_genres"],
                                [ITEMS[i][2] for i in (2, 3, 7)])
  assert train["gender"].tolist() == [1] * 3
  assert train["zip"].tolist() == [11] * 3
  val, test = rows_of(ds.splits["val"], 1), rows_of(ds.splits["test"], 1)
  assert val["target_item"].tolist() == [1] and val["rating"].tolist() == [4]
  assert val["hist_items"].tolist() == [[2, 3, 7]]  # last 3 of the history
  assert val["hist_len"].tolist() == [3]
  assert test["target_item"].tolist() == [4] and test["like"].tolist() == [0]
  assert test["hist_items"].tolist() == [[3, 7, 1]]  # ends with the val item
  assert test["hist_ratings"].tolist() == [[2, 1, 4]]
  # User 2 (4 interactions): one training example, left-padded.
  train2 = rows_of(ds.splits["train"], 2)
  assert train2["target_item"].tolist() == [8]
  assert train2["hist_items"].tolist() == [[0, 0, 6]]
  assert rows_of(ds.splits["test"], 2)["hist_items"].tolist() == [[6, 8, 1]]


def test_seq_targets_and_sequence_examples(folder):
  ds = build(folder, max_len=3)
  train = rows_of(ds.splits["train"], 1)
  # The item after each input position; the last entry is the target.
  assert train["seq_targets"].tolist() == [[0, 0, 2], [0, 2, 3], [2, 3, 7]]
  assert rows_of(ds.splits["test"], 1)["seq_targets"].tolist() == [[7, 1, 4]]
  for split in ds.splits.values():
    np.testing.assert_array_equal(split["seq_targets"][:, -1],
                                  split["target_item"])
    # Shifted by one: seq_targets[:, :-1] is hist_items[:, 1:] where real.
    real = split["hist_items"][:, :-1] != 0
    np.testing.assert_array_equal(
        np.where(real, split["seq_targets"][:, :-1], 0),
        np.where(real, split["hist_items"][:, 1:], 0))
  seq = build(folder, max_len=3, train_examples="sequences")
  # One training row per user: the longest prefix.
  assert seq.splits["train"]["user"].tolist() == [1, 2]
  assert seq.splits["train"]["seq_targets"].tolist() == [[2, 3, 7],
                                                         [0, 0, 8]]
  for split in ("val", "test"):
    for key, value in ds.splits[split].items():
      np.testing.assert_array_equal(seq.splits[split][key], value)
  assert seq.info["train_examples"] == "sequences"
  with pytest.raises(ValueError, match="train_examples"):
    build(folder, train_examples="windows")


def test_long_window_and_counts(folder):
  ds = build(folder, max_len=10)
  history = ds.splits["test"]["hist_items"][0].tolist()
  assert history == [0] * 5 + [5, 2, 3, 7, 1]
  assert ds.info["examples"] == {"train": 4, "val": 2, "test": 2}
  assert ds.info["dropped_users"] == 1  # user 3; user 4 never rated
  assert ds.info["num_users"] == 2
  assert 3 not in ds.splits["train"]["user"]
  assert all(ds.num_examples(s) == n for s, n in ds.info["examples"].items())


def test_exclude_is_the_full_past(folder):
  ds = build(folder, max_len=2)
  val, test = ds.splits["val"], ds.splits["test"]
  assert "exclude" not in ds.splits["train"]
  # Full history, time order, right-padded to the longest row of the split.
  assert val["exclude"].tolist() == [[5, 2, 3, 7], [6, 8, 0, 0]]
  assert test["exclude"].tolist() == [[5, 2, 3, 7, 1], [6, 8, 1, 0, 0]]
  assert not (val["exclude"] == val["target_item"][:, None]).any()
  assert not (test["exclude"] == test["target_item"][:, None]).any()


def test_no_leakage_on_random_data(tmp_path):
  rng = np.random.default_rng(0)
  items = {i: (f"Movie {i} (1990)", "", (0, 1, 0)) for i in range(1, 41)}
  ratings = []
  for user in range(1, 7):
    n = int(rng.integers(3, 30))
    for item, t in zip(rng.choice(40, n, replace=False) + 1,
                       rng.integers(0, 5, n)):  # many timestamp ties
      ratings.append((user, int(item), int(rng.integers(1, 6)), int(t)))
  users = {u: (25, "M", "writer", "12345") for u in range(1, 7)}
  folder = write_100k(tmp_path / "ml-100k", ratings, items, users)
  ds = build(folder, max_len=4)
  train, val, test = (ds.splits[s] for s in ("train", "val", "test"))
  history = []
  for user in range(1, 7):
    seq = [i for _, i in sorted((t, i) for u, i, _, t in ratings if u == user)]
    history += seq[:-2]
    tr, v, te = rows_of(train, user), rows_of(val, user), rows_of(test, user)
    seen = set(tr["hist_items"].ravel()) | set(tr["target_item"])
    assert seen - {0} <= set(seq[:-2])
    assert tr["target_item"].tolist() == seq[1:-2]
    assert v["target_item"].tolist() == [seq[-2]]
    assert te["target_item"].tolist() == [seq[-1]]
    assert seq[-1] not in seen and seq[-2] not in seen
    assert seq[-1] not in set(v["hist_items"].ravel())
    assert te["hist_items"][0, -1] == seq[-2]
    # No target sits in its own window (items are unique per user here).
    for split in (tr, v, te):
      assert not (split["hist_items"] == split["target_item"][:, None]).any()
  # Popularity counts training-history interactions only.
  np.testing.assert_array_equal(ds.info["item_popularity"],
                                np.bincount(history, minlength=41))


def test_specs_info_and_determinism(folder, tmp_path):
  ds = build(folder, max_len=3)
  specs = {f.name: f for f in ds.features}
  assert specs["hist_items"].kind == "sequence"
  hist = specs["hist_items"]
  assert (hist.vocab_size, hist.max_len) == (9, 3)
  assert specs["cand_item"].share_with == "hist_items"
  assert specs["user"].vocab_size == 5 and specs["gender"].vocab_size == 3
  assert specs["age"].vocab_size == 8 and specs["occupation"].vocab_size == 4
  assert specs["zip"].vocab_size == 12
  assert "target_item" not in specs  # the next-item label is never an input
  tasks = {t.name: t for t in ds.tasks}
  assert (tasks["next_item"].head, tasks["next_item"].label,
          tasks["next_item"].num_classes) == ("multiclass", "target_item", 9)
  assert tasks["rating"].metrics == ("rmse", "mae")
  assert tasks["like"].head == "binary"
  assert (tasks["genre"].label, tasks["genre"].num_classes) == (
      "target_genres", 3)
  for split, columns in ds.splits.items():
    assert columns["hist_items"].dtype == np.int32
    assert columns["hist_ratings"].dtype == np.float32
    assert columns["target_genres"].dtype == np.float32
    assert columns["target_item"].min() >= 1
  info = json.loads(json.dumps(ds.info))
  assert info["genre_names"] == list(GENRES)
  assert info["item_genre_ids"][3] == [1, 2] and info["item_genre_ids"][0] == []
  assert info["item_year_bucket"] == [0, 7, 5, 4, 0, 1, 7, 6, 8]
  # Same files, shuffled line order -> identical dataset.
  shuffled = write_100k(tmp_path / "again" / "ml-100k", RATINGS[::-1])
  again = build(shuffled, max_len=3)
  assert again.info == ds.info
  for split in ds.splits:
    assert ds.splits[split].keys() == again.splits[split].keys()
    for key in ds.splits[split]:
      np.testing.assert_array_equal(ds.splits[split][key],
                                    again.splits[split][key])


def test_load_movielens_uses_the_data_dir(tmp_path, folder, monkeypatch):
  monkeypatch.setenv(ml.DATA_DIR_ENV, str(tmp_path))
  ds = ml.load_movielens(max_len=3, strict_counts=False, seed=7)
  assert ds.info["examples"]["train"] == 4
  monkeypatch.delenv(ml.DATA_DIR_ENV)
  with pytest.raises(FileNotFoundError, match=ml.DATA_DIR_ENV):
    ml.load_movielens()


# ----------------------------------------------------------------------------
# Errors.


def test_missing_files(tmp_path, folder):
  with pytest.raises(FileNotFoundError, match="does not exist.*u.data"):
    ml.read_movielens(tmp_path / "nowhere")
  (folder / "u.user").unlink()
  with pytest.raises(FileNotFoundError, match=r"missing u\.user.*grouplens"):
    ml.read_movielens(folder, strict_counts=False)
  one_m = write_1m(tmp_path / "other" / "ml-1m")
  with pytest.raises(FileNotFoundError, match="variant='1m'"):
    ml.read_movielens(one_m, "100k")
  archive = zip_folder(one_m, tmp_path / "other" / "ml-100k.zip")
  with pytest.raises(FileNotFoundError, match=r"no member ml-100k/u\.data"):
    ml.read_movielens(archive, "100k")
  with pytest.raises(ValueError, match="unknown MovieLens variant '10m'"):
    ml.read_movielens(folder, "10m")


def test_strict_counts_reject_small_files(folder):
  with pytest.raises(ValueError, match=r"u\.data: truncated file: found 12 "
                     r"ratings.*100,000.*strict_counts=False"):
    ml.read_movielens(folder)


def test_strict_official_sized_files(tmp_path):
  rng = np.random.default_rng(1)
  items = {i: (f"M {i} (1990)", "", (0, 1, 0)) for i in range(1, 1683)}
  users = {u: (30, "F", "writer", "02139") for u in range(1, 944)}
  ratings = np.stack([np.arange(100_000) % 943 + 1,
                      rng.integers(1, 1683, 100_000),
                      rng.integers(1, 6, 100_000),
                      rng.integers(0, 10**9, 100_000)], 1)
  folder = write_100k(tmp_path / "ml-100k", [], items, users)
  np.savetxt(folder / "u.data", ratings, fmt="%d", delimiter="\t")
  assert ml.read_movielens(folder).num_ratings == 100_000
  ratings[41, 1] = 1683
  np.savetxt(folder / "u.data", ratings, fmt="%d", delimiter="\t")
  with pytest.raises(ValueError, match=r"u\.data, line 42: item id 1683 is "
                     r"out of range.*1\.\.1682"):
    ml.read_movielens(folder)
  # The same file is fine without strict counts, until the item is checked.
  with pytest.raises(ValueError, match=r"line 42: item id 1683 is not listed "
                     r"in u\.item"):
    ml.read_movielens(folder, strict_counts=False)


@pytest.mark.parametrize("lines, match", [
    ("1\t7\t1\t300\n1\t3\t2\n", r"u\.data, line 2: expected 4 '\\t'-separated "
     r"fields.*found 3"),
    ("1\t7\t1\t300\n1\t3\t2.5\t200\n", r"u\.data, line 2: field 'rating' is "
     r"'2\.5', not an integer"),
    ("1\t7\t1\t300\n\n1\t3\t6\t200\n", r"u\.data, line 3: rating 6 is out of "
     r"range"),
    ("1\t7\t1\t300\n0\t3\t2\t200\n", r"u\.data, line 2: user id 0 is out of "
     r"range"),
    ("1\t7\t1\t300\n1\t9\t2\t200\n", r"u\.data, line 2: item id 9 is not "
     r"listed in u\.item"),
    ("1\t7\t1\t300\n5\t3\t2\t200\n", r"u\.data, line 2: user id 5 is not "
     r"listed in u\.user"),
    # A download cut mid-line: the last line is short and lacks its newline.
    ("1\t7\t1\t300\n1\t3\t2", r"line 2: expected 4.*file looks truncated"),
])
def test_malformed_ratings(folder, lines, match):
  (folder / "u.data").write_text(lines)
  with pytest.raises(ValueError, match=match) as err:
    ml.read_movielens(folder, strict_counts=False)
  assert str(folder / "u.data") in str(err.value)
  assert ml.DOWNLOAD_URL in str(err.value)


def test_malformed_side_files(tmp_path, folder):
  items = dict(ITEMS)
  items[4] = ("unknown", "", (1, 0, 2))
  write_100k(folder, items=items)
  with pytest.raises(ValueError, match=r"u\.item, line 4: genre flag 'Comedy' "
                     r"is '2'"):
    ml.read_movielens(folder, strict_counts=False)
  write_100k(folder)
  (folder / "u.item").write_text((folder / "u.item").read_text(
      "latin-1").replace("3|Caf", "1|Caf"), "latin-1")
  with pytest.raises(ValueError, match=r"u\.item, line 3: movie id 1 is "
                     r"listed twice"):
    ml.read_movielens(folder, strict_counts=False)
  write_100k(folder, users={**USERS, 2: (30, "X", "engineer", "1")})
  with pytest.raises(ValueError, match=r"u\.user, line 2: gender 'X'"):
    ml.read_movielens(folder, strict_counts=False)
  write_100k(folder, users={**USERS, 3: (56, "M", "pilot", "1")})
  with pytest.raises(ValueError, match=r"u\.user, line 3: occupation 'pilot' "
                     r"is not listed in u\.occupation"):
    ml.read_movielens(folder, strict_counts=False)
  one_m = write_1m(tmp_path / "ml-1m")
  (one_m / "movies.dat").write_text("1::Alpha (1995)::Action|Horrors\n")
  with pytest.raises(ValueError, match=r"movies\.dat, line 1: unknown genre "
                     r"'Horrors'"):
    ml.read_movielens(one_m, "1m", strict_counts=False)


def test_bad_builder_arguments(folder):
  raw = ml.read_movielens(folder, strict_counts=False)
  with pytest.raises(ValueError, match="max_len"):
    ml.movielens_dataset(raw, max_len=0)
  with pytest.raises(ValueError, match="min_interactions must be an int >= 3"):
    ml.movielens_dataset(raw, min_interactions=2)
  with pytest.raises(ValueError, match="no user has >= 100 interactions"):
    ml.movielens_dataset(raw, min_interactions=100)
  ds = ml.movielens_dataset(raw, max_len=3, min_interactions=5)
  assert ds.info["dropped_users"] == 2 and ds.info["examples"]["test"] == 1


# ----------------------------------------------------------------------------
# The real ML-100K.


def test_real_movielens_100k():
  root = os.environ.get(ml.DATA_DIR_ENV)
  if not root:
    pytest.skip(f"${ml.DATA_DIR_ENV} is unset")
  folder = Path(root) / "ml-100k"
  assert folder.is_dir(), (f"${ml.DATA_DIR_ENV}={root} is set but {folder} "
                           f"is missing; extract ml-100k.zip there")
  raw = ml.read_movielens(folder, "100k")
  assert raw.num_ratings == 100_000
  assert raw.counts()["users_with_ratings"] == 943
  assert raw.counts()["items_rated"] == 1682 and raw.num_items == 1682
  assert raw.num_genres == 19
  ds = ml.movielens_dataset(raw, max_len=50)
  assert ds.num_examples("val") == 943 and ds.num_examples("test") == 943
  assert ds.num_examples("train") == 100_000 - 3 * 943
  assert ds.info["dropped_users"] == 0
  test = ds.splits["test"]
  assert test["target_item"].min() >= 1 and test["target_item"].max() <= 1682
  assert not (test["exclude"] == test["target_item"][:, None]).any()
  assert (test["exclude"] > 0).sum() == 100_000 - 943
  assert sum(ds.info["item_popularity"]) == 100_000 - 2 * 943
  json.dumps(ds.info)
