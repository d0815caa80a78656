"""Test-only fault injection: the training loop signals its own process.

``MTREC_FAULT="SIGKILL@12:step"`` makes a run send SIGKILL to itself right
after training step 12; tests/faults/ uses it to kill `mtrec run` at exact,
seeded points (a step is too short to hit by polling the process from
outside).  Phases, in the order the loop reaches them:

- ``step``: after the step's update, before its evaluation and checkpoint;
- ``save``: just after a checkpoint's save was started (Orbax writes it in
  the background, so SIGKILL lands while it is being written);
- ``final``: after the last step, before the final evaluation.

Unset (always, outside tests) it costs one environment lookup per step.
"""
from __future__ import annotations

import os
import re
import signal

ENV = "MTREC_FAULT"
PHASES = ("step", "save", "final")
_PLAN = re.compile(r"^(SIG[A-Z]+)@(\d+):(" + "|".join(PHASES) + r")$")


def parse(plan: str) -> tuple[signal.Signals, int, str]:
  """``"SIGTERM@7:save"`` -> (SIGTERM, 7, "save"); a clear error otherwise."""
  m = _PLAN.match(plan.strip())
  if m is None or m.group(1) not in signal.Signals.__members__:
    raise ValueError(f"{ENV}={plan!r}: expected SIGNAL@STEP:PHASE, e.g. "
                     f"SIGKILL@12:step, with PHASE one of {', '.join(PHASES)}")
  return signal.Signals[m.group(1)], int(m.group(2)), m.group(3)


def hit(step: int, phase: str) -> None:
  """Sends the planned signal to this process when (step, phase) is the
  planned point; nothing when $MTREC_FAULT is unset."""
  plan = os.environ.get(ENV)
  if not plan:
    return
  signum, at, when = parse(plan)
  if (at, when) == (int(step), phase):
    os.kill(os.getpid(), signum)
