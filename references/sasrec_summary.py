"""Collect the SASRec reproduction into references/results/sasrec_reference.*

    python -m references.sasrec_summary \
        --ref references/results/sasrec_ref/seed*.json \
        --ours paper/results/ml100k-sasrec-ref.jsonl paper/results/ml100k-mtl-ref.jsonl \
        --timing references/results/sasrec_ref/timing.jsonl

--ref: the JSON files `sasrec_pytorch eval` wrote for runs of the reference
(pmixer/SASRec.pytorch) on our split (references/README.md); --ours: the
`mtrec paper --export` files holding `ml100k-sasrec-ref` (the reference's
computation in our harness) and `ml100k-mtl-ref` (our models at the
reference's settings) runs; --timing: the JSON lines of `time_sasrec_epoch`
and `sasrec_pytorch time`.  Only numbers read from those files are written.

The JSON's "rows" are what the paper's table `sasrec-reference` shows
(paper/paper_spec.py reads them as a BenchTable): per implementation, each
metric as mean ± sample std over its runs, with † where Welch's two-sided
t-test against the reference's runs gives p < 0.05 (the seeds of the two
implementations are not paired: their random streams differ).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess

from scipy import stats as scipy_stats

METRICS = ("ndcg@10", "hr@10", "s_ndcg@10", "s_hr@10")
REFERENCE = "SASRec.pytorch (reference)"
# Our experiments in the comparison, and how their grid points are labelled.
OURS = {"ml100k-sasrec-ref": "ml100k-sasrec-ref (bce, as the reference)",
        "ml100k-mtl-ref": "ml100k-mtl-ref {point} (softmax)"}
ALPHA = 0.05
TORCH_IN_IMPL = re.compile(r"\(torch ([^,)]+)")


def _stats(values):
  if not values:
    return None
  mean = statistics.fmean(values)
  std = statistics.stdev(values) if len(values) > 1 else None
  return {"mean": mean, "std": std, "n": len(values)}


def _fmt(s, mark=""):
  if s is None:
    return "-"
  if s["std"] is None:
    return f"{s['mean']:.4f} (n=1)"
  return f"{s['mean']:.4f} ± {s['std']:.4f}{mark}"


def _welch_p(a, b):
  if len(a) < 2 or len(b) < 2:
    return None
  return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def _reference_runs(paths):
  out = []
  for path in paths:
    r = json.load(open(path))
    out.append({"file": os.path.relpath(path), "seed": r.get("seed"),
                "epoch": r["epoch"],
                "last_logged_epoch": r["log"][-1]["epoch"],
                "reference_own_test": {
                    "s_ndcg@10": r["reference_own"]["test"][0],
                    "s_hr@10": r["reference_own"]["test"][1]},
                "test": r["ours"]["test"], "val": r["ours"]["val"],
                "log": r["log"]})
  return out


def _our_runs(paths):
  out = []
  for path in paths:
    for line in open(path):
      r = json.loads(line)
      if r["experiment"] not in OURS or r["status"] != "done":
        continue
      point = ",".join(f"{k}={v}" for k, v in sorted(r["grid"].items())
                       if k != "seed")
      m = r["metrics"]
      (best,) = [e for e in r["evals"] if e["step"] == r["best_step"]]
      out.append({"file": os.path.relpath(path),
                  "implementation": OURS[r["experiment"]].format(
                      point=point), "seed": r["seed"], "steps": r["steps"],
                  "best_step": r["best_step"],
                  "config_hash": r["config_hash"],
                  "test": {k: m[f"test/next_all/{k}"] for k in METRICS},
                  "val": {k: best[f"val/next_all/{k}"] for k in METRICS}})
  return out


def _timing(paths):
  out = []
  for path in paths:
    for line in open(path):
      line = line.strip()
      if line.startswith("{"):
        out.append({"file": os.path.relpath(path), **json.loads(line)})
  return out


def _metric_table(rows, table):
  """Markdown lines of the `rows` of one table ('quality', 'validation')."""
  lines = ["| implementation | runs | " + " | ".join(METRICS) + " |",
           "|---|---|" + "---|" * len(METRICS)]
  return lines + [f"| {r['implementation']} | {r['runs']} | "
                  + " | ".join(r[k] for k in METRICS) + " |"
                  for r in rows if r["table"] == table]


def _git_commit():
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ref", nargs="*", default=[])
  p.add_argument("--ref-partial", nargs="*", default=[],
                 help="eval files of reference runs still training (listed "
                 "per run, left out of the means)")
  p.add_argument("--ours", nargs="*", default=[])
  p.add_argument("--timing", nargs="*", default=[])
  p.add_argument("--out", default="references/results/sasrec_reference")
  a = p.parse_args(argv)
  ref_runs, partial = _reference_runs(a.ref), _reference_runs(a.ref_partial)
  ours = _our_runs(a.ours)
  timing = _timing(a.timing)

  groups = {REFERENCE: ref_runs}
  for r in ours:
    groups.setdefault(r["implementation"], []).append(r)
  # Test ("quality") and, at the same selected checkpoints, validation:
  # a gap on test alone is not a difference of the models' fit.
  summary, rows = {}, []
  for split, table in (("test", "quality"), ("val", "validation")):
    for name, runs in groups.items():
      s = {k: _stats([r[split][k] for r in runs]) for k in METRICS}
      row = {"table": table, "implementation": name, "runs": len(runs)}
      for k in METRICS:
        p_value = None if name == REFERENCE else _welch_p(
            [r[split][k] for r in runs], [r[split][k] for r in ref_runs])
        if s[k] is not None:
          s[k]["welch_p_vs_reference"] = p_value
        row[k] = _fmt(s[k], "†" if p_value is not None and p_value < ALPHA
                      else "")
      summary.setdefault(split, {})[name] = s
      rows.append(row)
  own = {k: _stats([r["reference_own_test"][k] for r in ref_runs])
         for k in ("s_ndcg@10", "s_hr@10")}
  for t in timing:
    cpu = t.get("cpu_s_per_epoch") or t.get("cpu_s_per_epoch_main_process")
    rows.append({"table": "epoch_time", "implementation": t["impl"],
                 "load": t.get("load_avg_1m"),
                 "wall_s_per_epoch": statistics.median(t["wall_s_per_epoch"]),
                 "cpu_s_per_epoch": statistics.median(cpu),
                 "epochs": len(t["wall_s_per_epoch"])})
  torch_versions = sorted({m.group(1) for t in timing
                           for m in [TORCH_IN_IMPL.search(t["impl"])] if m})
  out = {"rows": rows, "git": {"commit": _git_commit()},
         "torch_version": ", ".join(torch_versions) or None,
         "reference_runs": ref_runs, "reference_partial_runs": partial,
         "our_runs": ours, "timing": timing, "summary": summary,
         "reference_own_protocol": own}
  with open(a.out + ".json", "w") as f:
    json.dump(out, f, indent=1)

  lines = ["# SASRec: the public reference vs our models on our split", "",
           "Generated by `python -m references.sasrec_summary` from the "
           "files named in sasrec_reference.json; see references/README.md "
           "for how each was made.", "",
           "Test, mean ± sample std over runs (checkpoint: best validation "
           "sampled NDCG@10, evaluated every 20 epochs / 160 steps).  Full "
           "ranking: all items, the user's history excluded; sampled: 100 "
           "distinct unseen negatives (our metric code for every "
           "implementation).  †: Welch's two-sided t-test against the "
           f"reference's runs, p < {ALPHA}.", "", *_metric_table(rows, "quality")]
  lines += ["", "Welch's p against the reference:", "",
            "| implementation | " + " | ".join(METRICS) + " |",
            "|---|" + "---|" * len(METRICS)]
  for name, s in summary["test"].items():
    if name != REFERENCE:
      lines.append(f"| {name} | " + " | ".join(
          "-" if s[k] is None or s[k]["welch_p_vs_reference"] is None
          else f"{s[k]['welch_p_vs_reference']:.3f}" for k in METRICS)
                   + " |")
  lines += ["", "Validation at the same checkpoints (the split that "
            "selected them), with Welch's † against the reference:", "",
            *_metric_table(rows, "validation")]
  lines += ["", "The reference's own sampled test numbers at the same "
            "checkpoints (its evaluate(): 100 negatives with replacement, "
            f"only training items excluded): s_ndcg@10 "
            f"{_fmt(own['s_ndcg@10'])}, s_hr@10 {_fmt(own['s_hr@10'])}.", "",
            "Per run:", "", "| run | epoch/step | " + " | ".join(METRICS)
            + " |", "|---|---|" + "---|" * len(METRICS)]
  for r in ref_runs:
    lines.append(f"| reference {r['file']} | epoch {r['epoch']} | "
                 + " | ".join(f"{r['test'][k]:.4f}" for k in METRICS) + " |")
  for r in partial:
    lines.append(f"| reference {r['file']} (STILL TRAINING, "
                 f"{r['last_logged_epoch']} of 200 epochs logged) | epoch "
                 f"{r['epoch']} | " + " | ".join(
                     f"{r['test'][k]:.4f}" for k in METRICS) + " |")
  for r in ours:
    lines.append(f"| {r['implementation']} seed {r['seed']} | step "
                 f"{r['best_step']} | " + " | ".join(
                     f"{r['test'][k]:.4f}" for k in METRICS) + " |")
  if timing:
    lines += ["", "Seconds per epoch (8 steps of batch 128, length 200), "
              "measured back to back on the same cores, in the order listed "
              "(load: the 1-minute load average when each measurement "
              "started; wall times taken under different loads are not "
              "comparable; CPU = the process's CPU time over all its "
              "threads, for the reference its main process only: its 3 "
              "sampler processes are not counted):",
              "", "| implementation | load | wall s/epoch | CPU s/epoch |",
              "|---|---|---|---|"]
    for t in timing:
      cpu = t.get("cpu_s_per_epoch") or t.get("cpu_s_per_epoch_main_process")
      load = t.get("load_avg_1m")
      load = "-" if load is None else f"{load:.1f}"
      lines.append(f"| {t['impl']} | {load} | " + ", ".join(
          f"{x:.2f}" for x in t["wall_s_per_epoch"]) + " | " + ", ".join(
              f"{x:.2f}" for x in cpu) + " |")
  with open(a.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
