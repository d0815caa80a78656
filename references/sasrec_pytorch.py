"""Run the public SASRec reference (pmixer/SASRec.pytorch) on our split, and
score its checkpoints with our metric code.

    python -m references.sasrec_pytorch setup  [--mirror GIT_DIR]
    python -m references.sasrec_pytorch train SEED [--threads 1]
    python -m references.sasrec_pytorch eval SEED   # -> results/sasrec_ref/seedSEED.json
    python -m references.sasrec_pytorch time [--epochs 3]

Why a script: issue 15 asks that `ml100k-sasrec-ref` reproduce the reference
implementation's numbers within seed noise.  That takes several seeds of the
reference, each run unmodified, and each scored exactly as our runs are.
The reference's code is not in this repository: `setup` copies its three
files (`python/{main,model,utils}.py` at the commit `COMMIT`) from a git
mirror of it (`fetch github:pmixer/SASRec.pytorch`) into `WORK` (ignored by
git) and writes our split there in its input format
(`export_sasrec_split`).  The per-seed results this writes land in
``references/results/sasrec_ref/``, inside the repository, so that they
outlive the machine they were made on.

* ``train``: seeds Python's, NumPy's and torch's global generators with SEED
  (main.py has no seed option; its sampler workers draw their seeds from
  NumPy's global generator, so they follow), sets torch's thread count, and
  runs the reference's main.py through `runpy` with the README's ML-1M
  settings on our data: ``--maxlen=200 --dropout_rate=0.2 --device=cpu
  --num_epochs=200`` (every other option at its default).  Its stdout goes
  to ``WORK/seedSEED.log``, its checkpoints and log.txt to
  ``WORK/ml100k_ours_seedSEED/``.
* ``eval``: reads the run's log.txt, takes the evaluation with the best
  validation NDCG@10 of the reference's own protocol (the first one on
  ties), loads that epoch's checkpoint into the reference's `SASRec` class,
  feeds it OUR validation and test rows (each asserted equal to the window
  the reference's evaluate() builds), scores every item at the last
  position (as `SASRec.predict`) and computes hr@10, ndcg@10 (full ranking,
  the user's history excluded) and s_hr@10, s_ndcg@10 (our sampled
  protocol) with `mtrec_jax.tasks.metrics`, the functions `mtrec
  run` uses.  So both implementations are scored by one piece of code.
* ``time``: the reference's training loop (its model, init, WarpSampler,
  loss and Adam, as main.py runs them) without evaluation or printing,
  timing each epoch after a warm-up one; prints one JSON line, the format
  of `time_sasrec_epoch`.

`sasrec_summary` turns the JSON files into references/results/
sasrec_reference.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import runpy
import subprocess
import sys
import time

import numpy as np

COMMIT = "fde8a9c08febc2c898dc269b1d98ab762c50d2be"
FILES = ("main.py", "model.py", "utils.py")
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_sasrec_pytorch")
RESULTS = os.path.join(HERE, "results", "sasrec_ref")
DATASET = "ml100k_ours"
# The README's ML-1M command, on our data and CPU.
MAIN_ARGS = ("--maxlen=200", "--dropout_rate=0.2", "--device=cpu",
             "--num_epochs=200")
EVAL_EVERY = 20  # main.py evaluates every 20 epochs
LOG_LINE = re.compile(r"^(\d+) \(([^,]+), ([^)]+)\) \(([^,]+), ([^)]+)\)$")
# With NumPy >= 2, log.txt writes its numbers as "np.float64(0.35)".
NUMPY_REPR = re.compile(r"np\.float64\(([^)]*)\)")


def setup(mirror: str, work: str) -> None:
  os.makedirs(os.path.join(work, "data"), exist_ok=True)
  for name in FILES:
    text = subprocess.run(["git", "--git-dir", mirror, "show",
                           f"{COMMIT}:python/{name}"], check=True,
                          capture_output=True).stdout
    with open(os.path.join(work, name), "wb") as f:
      f.write(text)
  from references import export_sasrec_split
  rc = export_sasrec_split.main(
      ["--out", os.path.join(work, "data", DATASET + ".txt")])
  if rc:
    raise SystemExit(rc)
  print(f"reference files of {COMMIT[:7]} and our split are in {work}")


@contextlib.contextmanager
def _in_reference(work: str):
  """cwd = the reference's folder (it reads data/NAME.txt) and its modules
  importable, as when main.py is run from there."""
  if not os.path.exists(os.path.join(work, "main.py")):
    raise SystemExit(f"{work} has no main.py: run `python -m "
                     f"references.sasrec_pytorch setup` first")
  old = os.getcwd()
  os.chdir(work)
  sys.path.insert(0, work)
  try:
    yield
  finally:
    sys.path.remove(work)
    os.chdir(old)


def _seed_everything(seed: int, threads: int) -> None:
  import torch
  random.seed(seed)
  np.random.seed(seed)
  torch.manual_seed(seed)
  torch.set_num_threads(threads)


def train(seed: int, threads: int, work: str, epochs: int) -> None:
  _seed_everything(seed, threads)
  args = [f"--dataset={DATASET}", f"--train_dir=seed{seed}", *MAIN_ARGS]
  if epochs != 200:
    args = [a for a in args if not a.startswith("--num_epochs")]
    args.append(f"--num_epochs={epochs}")
  with _in_reference(work):
    sys.argv = ["main.py", *args]
    runpy.run_path("main.py", run_name="__main__")


def read_log(path: str) -> list[dict]:
  """log.txt's evaluations: [{'epoch', 'val': [ndcg, hr], 'test': [...]}]."""
  out = []
  with open(path) as f:
    for line in f:
      m = LOG_LINE.match(NUMPY_REPR.sub(r"\1", line.strip()))
      if m:
        e, vn, vh, tn, th = m.groups()
        out.append({"epoch": int(e), "val": [float(vn), float(vh)],
                    "test": [float(tn), float(th)]})
  return out


def _model_args():
  return argparse.Namespace(hidden_units=50, maxlen=200, num_blocks=2,
                            num_heads=1, dropout_rate=0.2, device="cpu",
                            norm_first=False, lr=0.001, batch_size=128,
                            l2_emb=0.0)


def _checkpoint(run_dir: str, epoch: int) -> str:
  a = _model_args()
  return os.path.join(run_dir, (
      f"SASRec.epoch={epoch}.lr={a.lr}.layer={a.num_blocks}.head="
      f"{a.num_heads}.hidden={a.hidden_units}.maxlen={a.maxlen}.pth"))


def _reference_window(items: list[int], maxlen: int) -> np.ndarray:
  seq = np.zeros(maxlen, np.int64)
  tail = items[-maxlen:]
  seq[maxlen - len(tail):] = tail
  return seq


def evaluate(seed: int, work: str, out: str) -> dict:
  import torch

  from mtrec_jax.experiment import get_experiment
  from mtrec_jax.tasks.metrics import get_metric
  from mtrec_jax.train import loop
  from references.export_sasrec_split import our_split

  run_dir = os.path.join(work, f"{DATASET}_seed{seed}")
  log = read_log(os.path.join(run_dir, "log.txt"))
  if not log:
    raise SystemExit(f"{run_dir}/log.txt has no evaluation yet")
  best = max(log, key=lambda r: r["val"][0])  # first maximum
  cfg = get_experiment("ml100k-sasrec-ref").config
  ds = loop.load_dataset(cfg)
  split, info = our_split()
  with _in_reference(work):
    from model import SASRec  # the reference's class
    torch.set_num_threads(1)
    model = SASRec(info["num_users"], info["num_items"], _model_args())
    state = torch.load(_checkpoint(run_dir, best["epoch"]),
                       map_location="cpu")
    model.load_state_dict(state)
  model.eval()
  result = {"seed": seed, "epoch": best["epoch"], "commit": COMMIT,
            "checkpoint": os.path.basename(_checkpoint(run_dir,
                                                       best["epoch"])),
            "log": log, "reference_own": {"val": best["val"],
                                          "test": best["test"]},
            "ours": {}, "torch": torch.__version__}
  for name, short in (("val", "val"), ("test", "test")):
    rows = ds.splits[name]
    for r, user in enumerate(rows["user"]):
      history, valid, _ = split[int(user)]
      want = _reference_window(history if name == "val"
                               else history + [valid], 200)
      if not np.array_equal(rows["hist_items"][r], want):
        raise AssertionError(f"{name} row {r} (user {user}): our input "
                             f"differs from the reference's window")
    with torch.no_grad():
      feats = model.log2feats(np.asarray(rows["hist_items"], np.int64))
      last = feats[:, -1, :]
      scores = (last @ model.item_emb.weight.T).numpy()
    result["ours"][short] = {
        k: get_metric(k)(scores, rows["target_item"], None,
                          exclude=rows["exclude"])
        for k in ("hr@10", "ndcg@10", "s_hr@10", "s_ndcg@10")}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({"seed": seed, "epoch": best["epoch"],
                    "test": result["ours"]["test"]}))
  return result


def time_epochs(epochs: int, threads: int, work: str, seed: int) -> dict:
  import torch
  _seed_everything(seed, threads)
  load = os.getloadavg()[0]
  with _in_reference(work):
    from model import SASRec
    from utils import WarpSampler, data_partition
    train_, _, _, usernum, itemnum = data_partition(DATASET)
    args = _model_args()
    num_batch = (len(train_) - 1) // args.batch_size + 1
    sampler = WarpSampler(train_, usernum, itemnum,
                          batch_size=args.batch_size, maxlen=args.maxlen,
                          n_workers=3)
    try:
      model = SASRec(usernum, itemnum, args)
      for p in model.parameters():  # main.py's init
        if p.dim() >= 2:
          torch.nn.init.xavier_normal_(p.data)
      model.pos_emb.weight.data[0, :] = 0
      model.item_emb.weight.data[0, :] = 0
      model.train()
      bce = torch.nn.BCEWithLogitsLoss()
      opt = torch.optim.Adam(model.parameters(), lr=args.lr,
                             betas=(0.9, 0.98))
      times = []
      for _ in range(epochs + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(num_batch):
          u, seq, pos, neg = (np.array(x) for x in sampler.next_batch())
          pos_logits, neg_logits = model(u, seq, pos, neg)
          idx = np.where(pos != 0)
          opt.zero_grad()
          loss = bce(pos_logits[idx], torch.ones_like(pos_logits[idx]))
          loss = loss + bce(neg_logits[idx],
                            torch.zeros_like(neg_logits[idx]))
          loss.backward()
          opt.step()
        times.append((time.perf_counter() - w0, time.process_time() - c0))
    finally:
      sampler.close()
  times = times[1:]  # the first epoch is a warm-up
  out = {"impl": f"SASRec.pytorch (torch {torch.__version__}, {threads} "
                 f"thread{'s' if threads > 1 else ''})",
         "steps_per_epoch": num_batch, "batch_size": args.batch_size,
         "max_len": args.maxlen, "load_avg_1m": load,
         "wall_s_per_epoch": [t[0] for t in times],
         "cpu_s_per_epoch_main_process": [t[1] for t in times]}
  print(json.dumps(out))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--work", default=WORK,
                 help="the reference's folder (default: %(default)s)")
  sub = p.add_subparsers(dest="cmd", required=True)
  s = sub.add_parser("setup", help="copy the reference's files, write our "
                     "split in its format")
  s.add_argument("--mirror", default="/work/.mirror/pmixer+SASRec.pytorch/"
                 "repo", help="a git dir of pmixer/SASRec.pytorch holding "
                 f"commit {COMMIT[:7]}")
  t = sub.add_parser("train", help="one seed of main.py, unmodified")
  t.add_argument("seed", type=int)
  t.add_argument("--threads", type=int, default=1)
  t.add_argument("--epochs", type=int, default=200)
  e = sub.add_parser("eval", help="score a run's best checkpoint with our "
                     "metric code")
  e.add_argument("seed", type=int)
  e.add_argument("--out", default=None,
                 help="JSON to write (default results/sasrec_ref/"
                 "seedSEED.json)")
  m = sub.add_parser("time", help="seconds per training epoch")
  m.add_argument("--epochs", type=int, default=3)
  m.add_argument("--threads", type=int, default=2)
  m.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  if a.cmd == "setup":
    setup(a.mirror, a.work)
  elif a.cmd == "train":
    train(a.seed, a.threads, a.work, a.epochs)
  elif a.cmd == "eval":
    evaluate(a.seed, a.work, a.out or os.path.join(
        RESULTS, f"seed{a.seed}.json"))
  else:
    time_epochs(a.epochs, a.threads, a.work, a.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
