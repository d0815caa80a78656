"""A run's status: the words the store, the sweep, tables and figures share.

    running   an attempt is at work (its owner alive, its heartbeat fresh)
    done      finished; its metrics count
    diverged  a non-finite loss stopped it, at a recorded step
    preempted stopped by SIGTERM/SIGINT after writing a checkpoint; the next
              sweep claims it at once (`--resume` continues it)
    failed    an exception, a crash or a kill; retried by the next sweep
    missing   the store has no attempt of it (tables and status only)

`FINAL` are the outcomes a run keeps: a sweep skips them unless forced. A
diverged run is a finding about its strategy, not an accident: with the same
config and seed it would diverge again. Failed runs are retried.
"""
from __future__ import annotations

RUNNING, DONE, DIVERGED, FAILED, MISSING, PREEMPTED = (
    "running", "done", "diverged", "failed", "missing", "preempted")
FINAL = (DONE, DIVERGED)
# The order summaries list statuses in (`mtrec status`).
ORDER = (DONE, RUNNING, PREEMPTED, DIVERGED, FAILED, MISSING)
