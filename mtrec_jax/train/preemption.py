"""Preemption: SIGTERM or SIGINT ends a run with a checkpoint, not a loss.

Cloud TPU VMs, SLURM (`--signal`, `scancel`, a preempting partition) and
Kubernetes send SIGTERM some seconds before they kill a job; Ctrl-C sends
SIGINT.  While `watch()` is active, either signal only raises a flag; the
training loop looks at it after each step, writes a checkpoint, waits for it
to be on disk and raises `Preempted`.  The sweep then marks the attempt
`preempted` in the store, so the requeued job (`mtrec run ... --resume`, on
any host) claims it at once and continues from that checkpoint.

A second SIGINT while the first is being handled raises KeyboardInterrupt
at once (a user who presses Ctrl-C twice wants out); a second SIGTERM is
ignored (the checkpoint is on its way).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on a signal, after checkpointing `step` (None: it had
  no checkpoint store, so a resumed run starts over)."""

  def __init__(self, signum: int, step: int, checkpointed: bool):
    self.signum, self.step, self.checkpointed = int(signum), int(step), bool(
        checkpointed)
    name = signal.Signals(self.signum).name
    where = (f"checkpoint of step {step} saved; --resume continues from it"
             if checkpointed else
             f"no checkpoint (checkpoints are off); a rerun starts over")
    super().__init__(f"preempted by {name} at step {step}: {where}")


class Flag:
  """The signal received while watching (None: none yet)."""

  def __init__(self):
    self.signum: int | None = None

  def __bool__(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def watch() -> Iterator[Flag]:
  """Turns SIGTERM/SIGINT into a `Flag` while active; the previous handlers
  come back on exit.  Outside the main thread (where Python cannot install
  handlers) the flag never rises and signals act as before."""
  flag = Flag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handler(signum, frame):
    if flag.signum is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      return
    flag.signum = signum

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
