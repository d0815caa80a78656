"""SIGKILL and SIGTERM at seeded points of a real `mtrec run`, then
`mtrec run --resume`: the final result, validation curve, stored evaluation
history and saved parameters equal those of the uninterrupted run (issue
16, "must show").

Ten kill points in two chains of five: each chain is one run killed five
times, resumed after each kill, and once more to the end.  The five points
of a chain are one of each kind (before the first checkpoint; between two
checkpoints; at an evaluation step before its checkpoint; while a checkpoint
is being written; at the last step: its final checkpoint or the final
evaluation); which step, and which signal, a seeded RNG draws, and the two
chains get opposite signals at each kind.  After the 2nd and 4th kill of a
chain one byte of one file of its newest checkpoint is flipped as well, so
the resume must also skip a damaged checkpoint.  The loop signals its own
process at the exact step and phase ($MTREC_FAULT, mtrec_jax/train/faults).
"""
from __future__ import annotations

import json
import random
import signal

import numpy as np
import pytest

import faults_harness as h
from mtrec_jax.results.store import Store
from mtrec_jax.train import checkpoints
from mtrec_jax.train import faults

pytestmark = pytest.mark.slow

E, N = h.EVAL_EVERY, h.NUM_STEPS
KINDS = ("before the first checkpoint", "between checkpoints",
         "at an evaluation step, before its checkpoint",
         "while a checkpoint is written", "at the last step")
FLIP_AFTER = (1, 3)  # kill indexes after which a checkpoint byte is flipped


def _draw(rng: random.Random, kind: str) -> tuple[int, str]:
  """(step, phase) of one kill point of `kind`."""
  evals = list(range(E, N, E))  # 10, 20, 30: checkpoints before the last
  if kind == KINDS[0]:
    return rng.randint(1, E - 1), "step"
  if kind == KINDS[1]:
    return rng.choice([s for s in range(E + 1, N) if s % E]), "step"
  if kind == KINDS[2]:
    return rng.choice(evals), "step"
  if kind == KINDS[3]:
    return rng.choice(evals), "save"
  return N, rng.choice(("save", "final"))


def plan(seed: int = 16) -> list[list[tuple[str, int, str]]]:
  """Two chains of (signal, step, phase), each in step order with distinct
  steps (a resumed run starts at or before its last kill's step, so it
  reaches the next point)."""
  rng = random.Random(seed)
  signals = []
  while len(set(signals)) < 2:  # each chain mixes the two
    signals = [rng.choice(("SIGKILL", "SIGTERM")) for _ in KINDS]
  chains = []
  for c in range(2):
    while True:
      points = [_draw(rng, k) for k in KINDS]
      if len({s for s, _ in points}) == len(points):
        break
    sigs = signals if c == 0 else [
        "SIGTERM" if s == "SIGKILL" else "SIGKILL" for s in signals]
    chains.append(sorted(((sig, s, p) for sig, (s, p) in zip(sigs, points)),
                         key=lambda x: x[1]))
  return chains


@pytest.mark.parametrize("plan_text, want", [
    ("SIGKILL@12:step", (signal.SIGKILL, 12, "step")),
    (" SIGTERM@0:final ", (signal.SIGTERM, 0, "final")),
    ("SIGINT@7:save", (signal.SIGINT, 7, "save"))])
def test_fault_plans_parse(plan_text, want):
  assert faults.parse(plan_text) == want


@pytest.mark.parametrize("plan_text", [
    "SIGKILL@12", "KILL@12:step", "SIGKILL@-1:step", "SIGKILL@3:eval",
    "SIGNOPE@3:step", ""])
def test_a_bad_fault_plan_names_the_format(plan_text):
  with pytest.raises(ValueError, match="expected SIGNAL@STEP:PHASE"):
    faults.parse(plan_text)


def test_the_plan_covers_every_kind_and_both_signals():
  chains = plan()
  points = [p for chain in chains for p in chain]
  assert len(points) >= 10
  assert {sig for sig, _, _ in points} == {"SIGKILL", "SIGTERM"}
  assert any(s < E and p == "step" for _, s, p in points)
  assert any(s > E and s % E and p == "step" for _, s, p in points)
  assert any(s % E == 0 and s < N and p == "step" for _, s, p in points)
  assert any(p == "save" and s < N for _, s, p in points)
  assert all(any(s == N for _, s, _ in chain) for chain in chains)
  for chain in chains:
    steps = [s for _, s, _ in chain]
    assert steps == sorted(set(steps))
    assert {sig for sig, _, _ in chain} == {"SIGKILL", "SIGTERM"}


def _flip(folder, rng: random.Random) -> str:
  """Flips one byte (XOR 0xFF, seeded offset) of one file that the
  checkpoint's manifest lists, or of the manifest; returns its name."""
  names = sorted(json.loads((folder / checkpoints.MANIFEST).read_text()
                            )["sha256"]) + [checkpoints.MANIFEST]
  # (A finished checkpoint always has its manifest: Orbax renames the
  # folder into place after it was written.)
  name = rng.choice(names)
  data = bytearray((folder / name).read_bytes())
  data[rng.randrange(len(data))] ^= 0xFF
  (folder / name).write_bytes(bytes(data))
  return name


def _expect_killed(tmp, name, code, sig, step, phase) -> bool:
  """Checks how a faulted process ended; True when its run finished."""
  out = h.log(tmp, name)
  if sig == "SIGKILL":
    assert code == -signal.SIGKILL, out[-3000:]
    return False
  if step == N:  # after the last step: nothing left to checkpoint, it ends
    assert code == 0, out[-3000:]
    return True
  assert code == 1, out[-3000:]
  assert f"preempted by SIGTERM at step {step}: checkpoint of step {step} " \
         f"saved" in out, out[-3000:]
  return False


def test_killed_and_resumed_runs_end_equal_to_the_uninterrupted_run(
    server, reference, fault_tmp):
  tmp = fault_tmp
  chains = plan()
  names = [f"chain{c}" for c in range(len(chains))]
  rng = random.Random(61)  # which files to flip
  finished = dict.fromkeys(names, False)
  flipped = {n: [] for n in names}
  for i in range(len(chains[0])):
    # The two chains side by side: one process each at a time.
    pids = {}
    for name, chain in zip(names, chains):
      sig, step, phase = chain[i]
      extra = ("--resume",) if i else ()
      pids[name] = server.start(name, *extra, fault=f"{sig}@{step}:{phase}")
    for name, chain in zip(names, chains):
      code = server.wait(pids[name])
      finished[name] = _expect_killed(tmp, name, code, *chain[i])
      folder = h.run_dir(tmp, name)
      steps = checkpoints.saved_steps(folder)
      if i in FLIP_AFTER and steps and not finished[name]:
        target = folder / "checkpoints" / str(steps[-1])
        flipped[name].append((steps[-1], _flip(target, rng)))
  # Every chain but one ending in a finished run resumed from a flipped one.
  assert sum(map(len, flipped.values())) >= 3, flipped
  pids = {n: server.start(n, "--resume") for n in names}
  want = h.result(reference)
  with Store(tmp / "reference" / "m.db") as s:
    (ref,) = s.results(h.EXPERIMENT)
    want_history = s.eval_history(ref["run_id"])
  want_params = checkpoints.load_params(reference)
  for name in names:
    assert server.wait(pids[name]) == 0, h.log(tmp, name)[-3000:]
    out = " ".join(h.log(tmp, name).split())
    for step, file in flipped[name]:
      assert f"checkpoints/{step} is damaged" in out, (file, out[-3000:])
    folder = h.run_dir(tmp, name)
    got = h.result(folder)
    assert h.comparable(got) == h.comparable(want), name
    assert (folder / "metrics.jsonl").read_text() == (
        reference / "metrics.jsonl").read_text()
    with Store(tmp / name / "m.db") as s:
      (row,) = s.results(h.EXPERIMENT)
      assert row["status"] == "done"
      assert row["metrics"] == ref["metrics"]
      assert s.eval_history(row["run_id"]) == want_history
    got_params = checkpoints.load_params(folder)
    assert jax_tree_equal(got_params, want_params)


def jax_tree_equal(a, b) -> bool:
  import jax
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y))
                          for x, y in zip(la, lb))
