"""A run's status: the words the store, the sweep, tables and figures share.

    running   an attempt is at work (its owner alive, its heartbeat fresh)
    done      finished; its metrics count
    diverged  a non-finite loss stopped it, at a recorded step
    failed    an exception, a crash or a kill; retried by the next sweep
    missing   the store has no attempt of it (tables and status only)

`FINAL` are the outcomes a run keeps: a sweep skips them unless forced. A
diverged run is a finding about its strategy, not an accident: with the same
config and seed it would diverge again. Failed runs are retried.
"""
from __future__ import annotations

RUNNING, DONE, DIVERGED, FAILED, MISSING = (
    "running", "done", "diverged", "failed", "missing")
FINAL = (DONE, DIVERGED)
# The order summaries list statuses in (`mtrec status`).
ORDER = (DONE, RUNNING, DIVERGED, FAILED, MISSING)
