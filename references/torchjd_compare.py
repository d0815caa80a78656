"""Every `aggregate` name we share with torchjd, on the hard-Jacobian corpus.

Runs `mtrec_jax.weighting.aggregate(name, J)` (float64) and the matching
torchjd 0.18 aggregator on each Jacobian of `tests/weighting/hard_jacobians.py`
and writes, per aggregator and case, the cosine of the two updates and the
ratio of their norms (ours / torchjd) to ``references/results/
torchjd_compare.{md,json}``.

Optional dependencies (not needed by mtrec_jax or its tests)::

  pip install torch==2.13.0 "torchjd[full]==0.18.0"
  python -m references.torchjd_compare

(on this machine ``pip install torch==2.13.0`` takes the CPU wheel on disk;
install no other torch version).

Conventions matched, so that the numbers compare the methods and not their
defaults: our ``cagrad`` runs with ``rescale=0`` (torchjd does not divide by
``1 + c^2``) and torchjd's with ``c=0.4``; our ``aligned_mtl`` with
``pref_vector=[1/K] * K`` (torchjd's mean preference); PCGrad's and GradVac's
random visiting orders are replaced in torchjd by the identity permutation
(``torch.randperm`` patched), which is our ``aggregate`` without a key;
GradDrop's uniforms in torchjd (``torch.rand`` patched) are ours,
``uniform_16bit(PRNGKey(0), P)``, which ``aggregate`` draws without a key.
torchjd's stateful aggregators (NashMTL, GradVac) are built fresh per case,
as ``aggregate`` starts from a fresh state.

An update counts as zero when its norm is below 1e-7 times ``||J||_F``; two
zero updates agree (cosine and ratio reported as 1), one zero update against
a nonzero one is a disagreement (cosine NaN, ratio 0 or inf).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import sys
from typing import Callable
from unittest import mock

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.weighting.hard_jacobians import CORPUS, PARETO_STATIONARY  # noqa: E402

ZERO_REL = 1e-7  # as tests/weighting/test_hard_jacobians.py


def _torchjd_aggregators(k: int, p: int) -> dict[str, tuple[dict, Callable]]:
  """Our (hyper-parameters, torchjd factory + patch) per shared name."""
  import torch
  import torchjd.aggregation as A

  from mtrec_jax.weighting.projection import uniform_16bit
  import jax

  def identity_perm(n, *args, **kwargs):
    return torch.arange(n)

  noise = np.asarray(uniform_16bit(jax.random.PRNGKey(0), p), np.float64)

  def fixed_rand(shape, *args, dtype=None, device=None, **kwargs):
    return torch.as_tensor(noise, dtype=dtype).reshape(shape)

  perm = lambda: mock.patch.object(torch, "randperm", identity_perm)
  rand = lambda: mock.patch.object(torch, "rand", fixed_rand)
  none = contextlib.nullcontext
  return {
      "mean": ({}, A.Mean, none),
      "sum": ({}, A.Sum, none),
      "mgda": ({}, A.MGDA, none),
      "upgrad": ({}, A.UPGrad, none),
      "dualproj": ({}, A.DualProj, none),
      "imtl_g": ({}, A.IMTLG, none),
      "cagrad": ({"c": 0.4, "rescale": 0}, lambda: A.CAGrad(c=0.4), none),
      "nash_mtl": ({}, lambda: A.NashMTL(n_tasks=k), none),
      "pcgrad": ({}, A.PCGrad, perm),
      "gradvac": ({}, A.GradVac, perm),
      "graddrop": ({}, A.GradDrop, rand),
      "aligned_mtl": ({"pref_vector": [1.0 / k] * k}, A.AlignedMTL, none),
  }


def _ours(name: str, jac: np.ndarray, hparams: dict) -> np.ndarray:
  import jax
  import mtrec_jax.weighting as W
  with jax.enable_x64(True):
    import jax.numpy as jnp
    return np.asarray(W.aggregate(name, jnp.asarray(jac, jnp.float64),
                                  **hparams), np.float64)


def _theirs(factory, patch, jac: np.ndarray) -> np.ndarray:
  import torch
  with patch():
    agg = factory()
    out = agg(torch.as_tensor(jac, dtype=torch.float64))
  return out.detach().numpy().astype(np.float64)


def compare(ours: np.ndarray, theirs: np.ndarray, jac: np.ndarray,
            labels=("ours", "torchjd")) -> dict:
  """Cosine, norm ratio (first / second) and zero flags of two updates."""
  a, b = labels
  scale = np.linalg.norm(jac)
  tiny = ZERO_REL * scale if scale > 0 else 1e-300
  no, nt = float(np.linalg.norm(ours)), float(np.linalg.norm(theirs))
  zo, zt = no <= tiny, nt <= tiny
  if zo and zt:
    cos, ratio = 1.0, 1.0
  elif zo or zt:
    cos, ratio = float("nan"), (0.0 if zo else float("inf"))
  else:
    cos, ratio = float(ours @ theirs / (no * nt)), no / nt
  return {"cosine": cos, "norm_ratio": ratio, f"{a}_norm": no,
          f"{b}_norm": nt, f"{a}_zero": bool(zo), f"{b}_zero": bool(zt)}


def agrees(row: dict, cos_min: float = 0.999, rtol: float = 0.02) -> bool:
  zeros = [v for key, v in row.items() if key.endswith("_zero")]
  return (len(set(zeros)) == 1 and row["cosine"] >= cos_min
          and abs(row["norm_ratio"] - 1) <= rtol)


def _reference(name: str, jac: np.ndarray):
  """Our independent reference's update (tests/weighting/
  test_hard_jacobians.py: HARD_REFERENCES), or None where the method is
  undefined (Nash-MTL at a Pareto-stationary point) or has no reference."""
  from tests.weighting import reference as ref
  from tests.weighting import reference_projection as rp
  from tests.weighting.test_hard_jacobians import HARD_REFERENCES, NoSolution
  from mtrec_jax.weighting.projection import uniform_16bit
  import jax
  k, p = jac.shape
  # At torchjd's conventions (see the module docstring).
  if name == "cagrad":
    return ref.cagrad(jac, c=0.4, rescale=0)
  if name == "aligned_mtl":
    return rp.aligned_mtl(jac, pref=np.full(k, 1.0 / k))
  if name == "graddrop":  # the uniforms for this P (the test pads P)
    return rp.graddrop(jac, np.asarray(
        uniform_16bit(jax.random.PRNGKey(0), p), np.float64))
  if name not in HARD_REFERENCES:
    return None
  try:
    return HARD_REFERENCES[name][1](jac)
  except NoSolution:
    return None


def run(names=None) -> dict:
  results: dict[str, dict[str, dict]] = {}
  for case, jac in CORPUS:
    k, p = jac.shape
    for name, (hparams, factory, patch) in _torchjd_aggregators(k, p).items():
      if names and name not in names:
        continue
      try:
        theirs = _theirs(factory, patch, jac)
        err = None
      except Exception as e:  # torchjd fails on some degenerate inputs.
        theirs, err = None, f"{type(e).__name__}: {e}"[:200]
      ours = _ours(name, jac, hparams)
      if theirs is None:
        row = {"cosine": float("nan"), "norm_ratio": float("nan"),
               "ours_norm": float(np.linalg.norm(ours)), "torchjd_norm": None,
               "ours_zero": None, "torchjd_zero": None, "torchjd_error": err}
      else:
        row = compare(ours, theirs, jac)
      want = _reference(name, jac)
      if want is not None:
        row["ours_vs_reference"] = compare(ours, want, jac,
                                           ("ours", "reference"))
        if theirs is not None:
          row["torchjd_vs_reference"] = compare(theirs, want, jac,
                                              ("torchjd", "reference"))
      results.setdefault(name, {})[case] = row
  return results


def _fmt(x) -> str:
  if x is None:
    return "-"
  if isinstance(x, float) and np.isnan(x):
    return "nan"
  return f"{x:.6f}" if abs(x) < 1e4 else f"{x:.3e}"


def write(results: dict, out: pathlib.Path) -> None:
  import torch
  import torchjd
  import jax
  meta = {"torch": torch.__version__,
          "torchjd": getattr(torchjd, "__version__", "0.18.0"),
          "jax": jax.__version__, "python": platform.python_version(),
          "cases": len(CORPUS),
          "pareto_stationary": sorted(PARETO_STATIONARY)}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(
      {"meta": meta, "results": results}, indent=1, sort_keys=True) + "\n")
  lines = [
      "# mtrec-jax aggregators vs torchjd on the hard-Jacobian corpus", "",
      f"Produced by `python -m references.torchjd_compare` (torch "
      f"{meta['torch']}, torchjd {meta['torchjd']}, jax {meta['jax']}; "
      f"float64) on the {len(CORPUS)} Jacobians of "
      "`tests/weighting/hard_jacobians.py`. Agreement: both updates zero, or "
      "cosine >= 0.999 and norm ratio (ours / torchjd) within 2%. "
      "Conventions matched: see the script's docstring.", "",
      "## Summary", "",
      "`ours~torchjd`: cases where the two agree. `ours~ref` and "
      "`torchjd~ref`: agreement of each with our independent reference "
      "(`tests/weighting/test_hard_jacobians.py`, exact solvers written "
      "differently: face enumeration for MGDA, the exact bargaining "
      "solution for Nash-MTL, least squares on J for IMTL-G, ...) on the "
      "cases where it is defined (Nash-MTL: not at Pareto-stationary "
      "points, where the bargaining problem has no solution).", "",
      "| aggregator | ours~torchjd | worst cosine | norm ratio range | "
      "ours~ref | torchjd~ref | disagreeing cases (ours vs torchjd) |",
      "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, rows in results.items():
    ok = [c for c, r in rows.items() if agrees(r)]
    bad = [c for c in rows if c not in ok]
    cos = [r["cosine"] for r in rows.values()]
    ratio = [r["norm_ratio"] for r in rows.values()
             if r["norm_ratio"] is not None]
    worst = "nan" if any(np.isnan(c) for c in cos) else _fmt(min(cos))
    finite = [x for x in ratio if np.isfinite(x)]
    rng = (f"{_fmt(min(ratio))} .. {_fmt(max(ratio))}" if finite else "-")
    refd = [r for r in rows.values() if "ours_vs_reference" in r]
    ours_ref = (f"{sum(agrees(r['ours_vs_reference']) for r in refd)}/"
                f"{len(refd)}" if refd else "-")
    tj = [r for r in refd if "torchjd_vs_reference" in r]
    tj_ref = (f"{sum(agrees(r['torchjd_vs_reference']) for r in tj)}/"
              f"{len(tj)}" if refd else "-")
    lines.append(f"| {name} | {len(ok)}/{len(rows)} | {worst} | {rng} | "
                 f"{ours_ref} | {tj_ref} | "
                 f"{', '.join(bad) if bad else '-'} |")
  lines += ["", "## Disagreements", "",
            "Ours vs torchjd; the last two columns: the cosine of each with "
            "the independent reference (`-`: none).", "",
            "| aggregator | case | cosine | norm ratio | ours norm | torchjd "
            "norm | note | ours~ref cos | torchjd~ref cos |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, rows in results.items():
    for case, r in rows.items():
      if agrees(r):
        continue
      note = r.get("torchjd_error") or (
          "Pareto stationary" if case in PARETO_STATIONARY else "")
      def ref_cos(key):
        if key not in r:
          return "-"
        x = r[key]
        zeros = [v for key, v in x.items() if key.endswith("_zero")]
        return "both zero" if all(zeros) else _fmt(x["cosine"])
      lines.append(f"| {name} | {case} | {_fmt(r['cosine'])} | "
                   f"{_fmt(r['norm_ratio'])} | {_fmt(r['ours_norm'])} | "
                   f"{_fmt(r['torchjd_norm'])} | {note} | "
                   f"{ref_cos('ours_vs_reference')} | "
                   f"{ref_cos('torchjd_vs_reference')} |")
  lines += ["", "## Why they differ", "",
            "- mgda: torchjd runs the paper's Frank-Wolfe and stops when its "
            "step falls below `epsilon = 1e-3` (at most 100 steps); ours "
            "solves the min-norm problem to solver precision. The "
            "`torchjd~ref` column shows torchjd's stop against the exact "
            "face enumeration; see `mtrec_jax/weighting/mgda.py`.",
            "- nash_mtl: torchjd's convex-concave procedure (the official "
            "code's) stalls far from `alpha_i (G alpha)_i = 1` when row norms "
            "differ; ours solves that equation (`nash_mtl.py`). At "
            "Pareto-stationary cases the method is undefined (no bargaining "
            "solution): no reference there.",
            "- cagrad: at Pareto-stationary points torchjd returns zero by "
            "design; ours returns the primal problem's maximiser closest to "
            "the mean gradient, as the reference (`cagrad.py`).", ""]
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(
      ROOT / "references" / "results" / "torchjd_compare"),
                      help="output path without suffix (.md and .json)")
  parser.add_argument("--names", nargs="*", help="only these aggregators")
  parser.add_argument("--from-json", action="store_true",
                      help="rewrite the .md from the .json, running nothing")
  args = parser.parse_args(argv)
  import torch
  torch.set_num_threads(1)
  if args.from_json:
    results = json.loads(pathlib.Path(args.out).with_suffix(
        ".json").read_text())["results"]
  else:
    results = run(args.names)
  write(results, pathlib.Path(args.out))
  print(pathlib.Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
