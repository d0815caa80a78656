"""Independent PyTorch reference for the Census-Income (KDD) benchmark.

    python -m references.torch_census --models shared_bottom mmoe \
        --seeds 0 1 2 --json references/results/census_torch.json

Why: issue 4 asks that every JAX model land within 0.005 test AUC of a
PyTorch MMoE / shared-bottom trained on the same split.  Only the arrays come
from `mtrec_jax.data.census.load_census_income` (so the 60/20/20 split, the
vocabularies and the standardisation are identical); the model, the training
loop, the loss and the AUC are written here in PyTorch/numpy, so a bug in our
JAX models, optimizer wiring or metrics would show up as a gap.

Setup mirrored from `experiments/census_mtl.py`:
* input: one 4-dim embedding per categorical feature (32 of them; id 0 would
  be padding with a zero vector, id 1 = out-of-vocabulary) concatenated with
  the 7 standardised numerics -> 135 dims;
* shared_bottom: Dense(64) + ReLU, the same 64-d vector to both tasks;
* mmoe: 8 experts, each Dense(16) + ReLU, one softmax gate (a linear layer
  on the input, no hidden layer) per task;
* towers: Dense(8) + ReLU -> Dense(1) logit, one per task; no dropout;
* loss: sigmoid BCE averaged over the batch per task, then the mean of the
  two task losses (our `mean` weighting);
* Adam(lr 1e-3, betas 0.9/0.999, eps 1e-8: the optax and torch defaults
  coincide), batch 256, 4,000 steps; batches follow the documented epoch rule
  of our pipeline (rows in `default_rng([seed, epoch]).permutation(n)` order,
  the last partial batch of an epoch dropped);
* validation every 500 steps; the weights with the lowest validation loss
  (mean of the task losses) are kept and evaluated once on test.
* init as flax's defaults: Dense kernels lecun-normal (a normal truncated at
  two standard deviations, rescaled to variance 1/fan_in), zero biases;
  embeddings normal(stddev = embed_dim ** -0.5).

Differences that remain: the random streams (torch's generator draws the
initial weights, so seed s here is not seed s in JAX - only the batch order
is the same), float32 summation order in the kernels, and the embedding
tables held as one concatenated [sum of vocab sizes, 4] table with per-feature
row offsets (same parameters and the same Adam update per entry as 32
separate tables).
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("shared_bottom", "mmoe")
TASKS = ("income", "marital")
# As for `mtrec run`: $MTREC_DATA_DIR, else the shared/ folder beside the repo.
DEFAULT_DATA_DIR = os.path.join(
    os.environ.get("MTREC_DATA_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
        "data"), "census-income")

# flax's truncated_normal(-2, 2) has std 0.8796...; lecun_normal divides by it.
_TRUNC_STD = 0.87962566103423978


# ---------------------------------------------------------------------- AUC
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """ROC AUC as the Mann-Whitney statistic; tied scores get their average
  rank, i.e. a tied positive/negative pair counts one half."""
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel() > 0.5
  n = scores.size
  n_pos = int(positive.sum())
  n_neg = n - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_scores)) + 1])
  ends = np.concatenate([starts[1:], [n]])
  # 1-based ranks starts+1 .. ends share their mean.
  ranks = np.empty(n, np.float64)
  ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
  u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def auc_brute_force(scores: np.ndarray, labels: np.ndarray) -> float:
  """The definition, pair by pair (O(P*N)): for small checks only."""
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(labels).ravel() > 0.5
  pos, neg = scores[positive][:, None], scores[~positive][None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def check_auc(seed: int = 0) -> float:
  """Largest |rank AUC - brute force| on tie-heavy random samples; raises
  if they disagree, so a wrong metric never reaches a results file."""
  rng = np.random.default_rng(seed)
  worst = 0.0
  for n, levels in ((7, 3), (300, 5), (1000, 40), (2000, 10_000)):
    labels = rng.random(n) < 0.3
    labels[:2] = (True, False)
    scores = np.round(rng.random(n) * levels) / levels + 0.3 * labels
    worst = max(worst, abs(auc(scores, labels) -
                           auc_brute_force(scores, labels)))
  if worst > 1e-12:
    raise AssertionError(f"rank AUC disagrees with brute force by {worst}")
  return worst


# ------------------------------------------------------------------- layers
def lecun_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
  """flax's default Dense kernel init on a torch tensor."""
  std = (1.0 / fan_in) ** 0.5 / _TRUNC_STD
  with torch.no_grad():
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


class StackedLinear(nn.Module):
  """N independent linear layers: [B, D] (shared input) or [N, B, D] ->
  [N, B, F]; kernels stored [N, D, F] (x @ W, as in flax)."""

  def __init__(self, num: int, d_in: int, d_out: int):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(num, d_in, d_out))
    self.bias = nn.Parameter(torch.zeros(num, d_out))
    for w in self.weight:  # each member as its own layer: fan_in = d_in
      lecun_normal_(w, d_in)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
      y = torch.einsum("bd,ndf->nbf", x, self.weight)
    else:
      y = torch.einsum("nbd,ndf->nbf", x, self.weight)
    return y + self.bias[:, None, :]


class Embeddings(nn.Module):
  """All categorical features' tables in one parameter with row offsets; id 0
  of any feature embeds to zeros (padding)."""

  def __init__(self, vocab_sizes: Sequence[int], dim: int):
    super().__init__()
    self.table = nn.Parameter(torch.randn(int(sum(vocab_sizes)), dim)
                              * dim ** -0.5)
    offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]])
    self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.long))

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    vectors = self.table[ids + self.offsets]  # [B, F, dim]
    vectors = vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)
    return vectors.flatten(1)


class CensusNet(nn.Module):
  """Embeddings -> connection -> K towers; forward gives logits [B, K]."""

  def __init__(self, model: str, vocab_sizes: Sequence[int], embed_dim: int,
               num_numeric: int, num_tasks: int = 2, bottom: int = 64,
               num_experts: int = 8, expert: int = 16, tower: int = 8):
    super().__init__()
    if model not in MODELS:
      raise ValueError(f"unknown model {model!r}; choose from {MODELS}")
    self.model = model
    self.num_tasks = num_tasks
    self.embed = Embeddings(vocab_sizes, embed_dim)
    d_in = len(vocab_sizes) * embed_dim + num_numeric
    if model == "shared_bottom":
      self.bottom = StackedLinear(1, d_in, bottom)
      rep = bottom
    else:
      self.experts = StackedLinear(num_experts, d_in, expert)
      self.gates = StackedLinear(num_tasks, d_in, num_experts)
      rep = expert
    self.tower_hidden = StackedLinear(num_tasks, rep, tower)
    self.tower_out = StackedLinear(num_tasks, tower, 1)

  def forward(self, ids: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
    x = torch.cat([self.embed(ids), numeric], dim=-1)
    if self.model == "shared_bottom":
      h = F.relu(self.bottom(x)).expand(self.num_tasks, -1, -1)  # [K, B, H]
    else:
      experts = F.relu(self.experts(x))  # [E, B, H]
      gates = torch.softmax(self.gates(x), dim=-1)  # [K, B, E]
      h = torch.einsum("kbe,ebh->kbh", gates, experts)
    h = F.relu(self.tower_hidden(h))
    return self.tower_out(h)[..., 0].T  # [B, K]


# --------------------------------------------------------------------- data
def load_arrays(data_dir: str, embed_dim: int = 4) -> dict:
  """Tensors per split from our loader: ids [N, F] long, numeric [N, 7],
  labels [N, K] in TASKS order, plus the vocabulary sizes."""
  from mtrec_jax.data.census import load_census_income  # the only mtrec_jax use
  ds = load_census_income(data_dir, task_pair="income_marital",
                          embed_dim=embed_dim)
  task_names = tuple(t.name for t in ds.tasks)
  if task_names != TASKS:
    raise ValueError(f"expected tasks {TASKS}, the loader gave {task_names}")
  cats = [f for f in ds.features if f.kind == "categorical"]
  nums = [f for f in ds.features if f.kind == "numeric"]
  out = {"vocab_sizes": [f.num_rows for f in cats],
         "num_numeric": sum(f.dim for f in nums), "sizes": {}}
  for split, cols in ds.splits.items():
    out[split] = (
        torch.as_tensor(np.stack([cols[f.name] for f in cats], axis=1)
                        .astype(np.int64)),
        torch.as_tensor(np.concatenate([cols[f.name] for f in nums], axis=1)
                        .astype(np.float32)),
        torch.as_tensor(np.stack([cols[t] for t in TASKS], axis=1)
                        .astype(np.float32)))
    out["sizes"][split] = int(len(cols[TASKS[0]]))
  return out


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int
                  ) -> np.ndarray:
  """Rows of training step `step` (0-based): epoch-wise reshuffles with
  default_rng([seed, epoch]), the remainder of each epoch dropped."""
  per_epoch = n // batch_size
  epoch, i = divmod(step, per_epoch)
  return _epoch_order(n, seed, epoch)[i * batch_size:(i + 1) * batch_size]


def task_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
  """[K] mean BCE of each task."""
  return F.binary_cross_entropy_with_logits(logits, labels,
                                            reduction="none").mean(dim=0)


@torch.no_grad()
def evaluate(net: CensusNet, split) -> dict[str, float]:
  """Losses and AUCs on a whole split (one forward pass; it is small)."""
  ids, numeric, labels = split
  net.eval()
  logits = net(ids, numeric)
  losses = task_losses(logits, labels)
  probs = torch.sigmoid(logits).numpy()  # float32, as our predictions
  out = {"loss": float(losses.mean())}
  for k, task in enumerate(TASKS):
    out[f"{task}/loss"] = float(losses[k])
    out[f"{task}/auc"] = auc(probs[:, k], labels[:, k].numpy())
  return out


# ----------------------------------------------------------------- training
def train_one(model: str, seed: int, data: dict, *, steps: int = 4000,
              batch_size: int = 256, lr: float = 1e-3, eval_every: int = 500,
              embed_dim: int = 4) -> dict:
  """One run; returns the row of the results JSON."""
  start = time.perf_counter()
  torch.manual_seed(seed)
  net = CensusNet(model, data["vocab_sizes"], embed_dim, data["num_numeric"])
  opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999),
                         eps=1e-8)
  ids, numeric, labels = data["train"]
  n = ids.shape[0]
  best_state, best_loss, best_step = None, float("inf"), 0
  history = []
  for step in range(steps):
    idx = torch.as_tensor(batch_indices(n, batch_size, seed, step))
    net.train()
    loss = task_losses(net(ids[idx], numeric[idx]), labels[idx]).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    done = step + 1
    if done % eval_every == 0 or done == steps:
      val = evaluate(net, data["val"])
      history.append({"step": done, **{f"val/{k}": v for k, v in val.items()}})
      if val["loss"] < best_loss:
        best_state = copy.deepcopy(net.state_dict())
        best_loss, best_step = val["loss"], done
  net.load_state_dict(best_state)
  test = evaluate(net, data["test"])
  # The metric once more, brute force on 2,000 test rows of this run.
  ids_t, num_t, lab_t = data["test"]
  with torch.no_grad():
    probs = torch.sigmoid(net(ids_t[:2000], num_t[:2000])).numpy()
  check = max(abs(auc(probs[:, k], lab_t[:2000, k].numpy()) -
                  auc_brute_force(probs[:, k], lab_t[:2000, k].numpy()))
              for k in range(len(TASKS)))
  row = {"model": model, "seed": seed,
         **{f"test/{k}": v for k, v in test.items()},
         "val/loss": best_loss, "best_step": best_step,
         "wall_s": round(time.perf_counter() - start, 2),
         "num_params": sum(p.numel() for p in net.parameters()),
         "auc_check_max_abs_diff": check, "val_history": history}
  return row


def summarize(rows: list[dict]) -> dict:
  """Per model: mean and sample std (ddof=1, as `mtrec table`) over seeds."""
  summary = {}
  for model in dict.fromkeys(r["model"] for r in rows):
    mine = [r for r in rows if r["model"] == model]
    entry = {"seeds": [r["seed"] for r in mine],
             "wall_s_total": round(sum(r["wall_s"] for r in mine), 2)}
    for key in ("test/income/auc", "test/marital/auc", "test/loss",
                "best_step"):
      vals = np.asarray([r[key] for r in mine], np.float64)
      entry[key] = {"mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    summary[model] = entry
  return summary


def main(argv: Sequence[str] | None = None) -> dict:
  p = argparse.ArgumentParser(
      prog="python -m references.torch_census",
      description="PyTorch shared-bottom / MMoE on Census-Income (income, "
                  "never married), on mtrec_jax's documented split.")
  p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                 help="folder with census-income.test(.gz) and/or .data(.gz) "
                      "(default: $MTREC_DATA_DIR/census-income, else "
                      "../shared/data/census-income beside the repository)")
  p.add_argument("--steps", type=int, default=4000)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--eval-every", type=int, default=500)
  p.add_argument("--threads", type=int, default=1,
                 help="torch intra-op threads (default %(default)s)")
  p.add_argument("--json", default="", help="write the results here")
  args = p.parse_args(argv)

  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(1)
  check_auc()
  t0 = time.perf_counter()
  data = load_arrays(args.data_dir)
  load_s = time.perf_counter() - t0
  print(f"data: {data['sizes']} rows, {len(data['vocab_sizes'])} categorical "
        f"+ {data['num_numeric']} numeric features ({load_s:.1f} s)",
        flush=True)
  rows = []
  for model in args.models:
    for seed in args.seeds:
      row = train_one(model, seed, data, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr,
                      eval_every=args.eval_every)
      rows.append(row)
      print(f"{model:14s} seed {seed}: income {row['test/income/auc']:.4f} "
            f"marital {row['test/marital/auc']:.4f} best step "
            f"{row['best_step']} ({row['wall_s']:.0f} s)", flush=True)
  result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "data_dir": os.path.normpath(args.data_dir), "split_sizes": data["sizes"],
            "config": {"steps": args.steps, "batch_size": args.batch_size,
                       "lr": args.lr, "eval_every": args.eval_every,
                       "embed_dim": 4, "bottom": 64, "num_experts": 8,
                       "expert": 16, "tower": 8},
            "data_load_s": round(load_s, 2),
            "rows": rows, "summary": summarize(rows)}
  for model, s in result["summary"].items():
    inc, mar = s["test/income/auc"], s["test/marital/auc"]
    print(f"{model:14s} income {inc['mean']:.4f}±{inc['std']:.4f}  "
          f"marital {mar['mean']:.4f}±{mar['std']:.4f}")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
      f.write("\n")
  return result


if __name__ == "__main__":
  main()
