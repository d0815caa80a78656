"""The store's side of preemption and takeover (issue 16, defect 6): a
preempted attempt is claimed again at once, a dead host's claim as soon as
its heartbeat lapses (a window set in seconds), and `force` takes over a live
attempt, whose owner then cannot record anything."""
from __future__ import annotations

import shutil
import sqlite3
import time

import pytest
from store_backends import store_target  # noqa: F401  (a fixture)

from mtrec_jax.results import store as store_lib
from mtrec_jax.results.store import Store

KEY = ("quickstart", "model=mmoe,seed=0", {"model": "mmoe", "seed": 0}, {},
       "h" * 16, 0)
FIXTURE = store_lib.pathlib.Path(__file__).parents[1] / "fixtures" / (
    "store_v1.db")


def _as_other_host(s: Store, run_id: int, age_s: float) -> None:
  """Makes an attempt look owned by a process on another machine whose
  last heartbeat was `age_s` ago (its pid cannot be checked from here)."""
  s.conn.execute("UPDATE runs SET hostname = 'elsewhere', heartbeat_at = ? "
                 "WHERE id = ?", (time.time() - age_s, run_id))


def test_preempted_is_claimed_again_at_once(store_target):
  with Store(store_target) as s:
    first = s.claim(*KEY)
    _as_other_host(s, first, 0.0)  # a live claim from another machine
    assert s.claim(*KEY) is None
    s.preempt(first, "preempted by SIGTERM at step 7: checkpoint saved")
    (st,) = s.status("quickstart")
    assert (st.status, st.run_id) == ("preempted", first)
    second = s.claim(*KEY)  # at once, whatever host held it
    assert second is not None and second != first
    rows = s.results("quickstart", latest_only=False)
    assert [(r["attempt"], r["status"]) for r in rows] == [
        (1, "preempted"), (2, "running")]
    assert "SIGTERM at step 7" in rows[0]["error"]


def test_a_dead_hosts_claim_is_taken_over_when_its_heartbeat_lapses(
    store_target, monkeypatch):
  with Store(store_target, stale_after_s=5) as s:
    first = s.claim(*KEY)
    _as_other_host(s, first, 4.0)
    assert s.claim(*KEY) is None  # 4 s silent: still alive
    _as_other_host(s, first, 6.0)
    second = s.claim(*KEY)
    assert second is not None
    (old,) = [r for r in s.results("quickstart", latest_only=False)
              if r["run_id"] == first]
    assert old["status"] == "failed"
    assert "stale: no heartbeat for 6s" in old["error"]
    assert "taken over by attempt 2" in old["error"]
    # The old owner, were it alive after all, cannot record over it.
    with pytest.raises(ValueError, match="taken over by attempt 2"):
      s.finish(first, {"status": "done", "metrics": {}})
  # The window: $MTREC_STALE_AFTER_S, else 300 s (it was 1800 s).
  monkeypatch.setenv("MTREC_STALE_AFTER_S", "45")
  with Store(store_target) as s:
    assert s.stale_after_s == 45.0
  monkeypatch.delenv("MTREC_STALE_AFTER_S")
  with Store(store_target) as s:
    assert s.stale_after_s == store_lib.DEFAULT_STALE_AFTER_S == 300.0
  for bad in ("soon", "0", "-3"):
    monkeypatch.setenv("MTREC_STALE_AFTER_S", bad)
    with pytest.raises(ValueError, match="MTREC_STALE_AFTER_S"):
      Store(store_target)


def test_force_takes_over_a_live_attempt(store_target):
  with Store(store_target) as s:
    first = s.claim(*KEY)  # held by this live process
    assert s.claim(*KEY) is None
    second = s.claim(*KEY, force=True)
    assert second is not None
    (st,) = s.status("quickstart")
    assert (st.status, st.run_id) == ("running", second)
    with pytest.raises(ValueError, match="was taken over by attempt 2"):
      s.preempt(first, "late")
    s.finish(second, {"status": "done", "metrics": {"m": 1.0}})
    (res,) = s.results("quickstart")
    assert (res["run_id"], res["status"]) == (second, "done")


def test_an_older_store_learns_the_preempted_status(tmp_path):
  """A store written before issue 16 (here the v1 fixture, migrated on
  open) gets 'preempted' added to its status CHECK in place; bad statuses
  stay refused, and every stored row is kept."""
  path = tmp_path / "old.db"
  shutil.copy(FIXTURE, path)
  raw = sqlite3.connect(path)
  count = raw.execute("SELECT count(*) FROM runs").fetchone()[0]
  assert "preempted" not in raw.execute(
      "SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
  raw.close()
  with Store(path) as s:
    assert s.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == count
    assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    run_id = s.claim(*KEY)
    s.preempt(run_id, "preempted")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
      s.conn.execute("UPDATE runs SET status = 'bogus' WHERE id = ?",
                     (run_id,))
  with Store(path) as s:  # opened again: nothing more to do
    assert [r["status"] for r in s.results("quickstart")
            if r["run_id"] == run_id] == ["preempted"]
