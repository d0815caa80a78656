"""Export OUR MovieLens leave-last-out split in the input format of the public
SASRec reference (pmixer/SASRec.pytorch, `python/data/<name>.txt`).

    python -m references.export_sasrec_split --out /work/sasrec_ref/python/data/ml100k_ours.txt

Why: issue 15 asks that `ml100k-sasrec`'s reference configuration reproduce
the reference implementation's numbers on OUR split.  The reference reads
one ``"user item"`` line per interaction, groups lines by user in file order
and splits each user's list itself (`utils.data_partition`: users with >= 4
interactions get train = all but the last two, valid = the second-last,
test = the last).  So we write, per user, the items of our split in this
order: training history, validation target, test target.  The history is
taken from our own dataset (`movielens_dataset(..., train_examples=
'sequences')`: the one training row per user, its input plus its target)
and checked against the validation row's input and the test row's input,
so the file is our split and not a re-derivation of it; after writing, the
file is read back with the reference's partition rule (re-implemented here
in 10 lines, the reference's code is not imported) and compared user by
user.  The script exits non-zero if anything differs.

Ids are ours unchanged (users 1..943, items 1..1682); the reference takes
``itemnum`` = the largest item id in the file, 1682 for ML-100K, so its
negative sampling range 1..itemnum is our catalogue.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

from mtrec_jax.data.movielens import load_movielens


def _rows(user: np.ndarray) -> dict[int, int]:
  return {int(u): i for i, u in enumerate(user)}


def our_split(data_dir: str | None = None):
  """{user: (train_history, valid_item, test_item)} from our dataset,
  with no window truncation (max_len = the longest history)."""
  probe = load_movielens(data_dir, max_len=1, train_examples="sequences")
  # The test rows' 'exclude' holds everything before the test target, so
  # its width is the longest window any split needs.
  width = int(probe.splits["test"]["exclude"].shape[1])
  ds = load_movielens(data_dir, max_len=width, train_examples="sequences")
  tr, va, te = (ds.splits[s] for s in ("train", "val", "test"))
  out = {}
  tr_row, te_row = _rows(tr["user"]), _rows(te["user"])
  for i, user in enumerate(va["user"]):
    user = int(user)
    history = tr["hist_items"][tr_row[user]]
    history = [int(x) for x in history[history != 0]]
    history.append(int(tr["target_item"][tr_row[user]]))
    val_input = [int(x) for x in va["hist_items"][i] if x != 0]
    if val_input != history:
      raise AssertionError(f"user {user}: validation input differs from "
                           f"the training history")
    valid = int(va["target_item"][i])
    test_input = [int(x) for x in te["hist_items"][te_row[user]] if x != 0]
    if test_input != history + [valid]:
      raise AssertionError(f"user {user}: test input is not training "
                           f"history + validation item")
    out[user] = (history, valid, int(te["target_item"][te_row[user]]))
  if len(out) != len(tr["user"]) or len(out) != len(te["user"]):
    raise AssertionError("train/val/test cover different users")
  return out, ds.info


def reference_partition(path: str):
  """The reference's `data_partition` rule, written again here."""
  user_items = collections.defaultdict(list)
  with open(path) as f:
    for line in f:
      u, i = line.rstrip().split(" ")
      user_items[int(u)].append(int(i))
  out = {}
  for u, items in user_items.items():
    if len(items) < 4:
      out[u] = (items, None, None)
    else:
      out[u] = (items[:-2], items[-2], items[-1])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="the .txt file to write")
  p.add_argument("--data-dir", default=None,
                 help="MovieLens folder (default $MTREC_DATA_DIR)")
  args = p.parse_args(argv)
  split, info = our_split(args.data_dir)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    for user in sorted(split):
      history, valid, test = split[user]
      for item in history + [valid, test]:
        f.write(f"{user} {item}\n")
  back = reference_partition(args.out)
  if back.keys() != split.keys():
    raise AssertionError("users differ after reading back")
  for user, (history, valid, test) in split.items():
    if back[user] != (history, valid, test):
      raise AssertionError(f"user {user}: the reference would split it "
                           f"differently")
  items = sorted({i for h, v, t in split.values() for i in h + [v, t]})
  lines = sum(len(h) + 2 for h, _, _ in split.values())
  print(f"wrote {args.out}: {len(split)} users, {lines} interactions, "
        f"item ids {items[0]}..{items[-1]} ({len(items)} distinct; our "
        f"catalogue 1..{info['num_items']}); train histories "
        f"{min(len(h) for h, _, _ in split.values())}.."
        f"{max(len(h) for h, _, _ in split.values())} items")
  if items[-1] != info["num_items"]:
    print("WARNING: the largest item id in the file is not the catalogue "
          "size; the reference's negative range would differ",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
