"""What only the PostgreSQL store has: its backup to one SQLite file, the
CLI with a URL, and its SQL dialect (placeholders, rows)."""
from __future__ import annotations

import math

import pytest
from store_backends import postgres_target  # noqa: F401  (a fixture)

from mtrec_jax import cli
from mtrec_jax.results import backup, postgres
from mtrec_jax.results.store import Store


def _fill(s: Store) -> list[int]:
  """Three attempts of two runs: done (replaced by a forced done), failed."""
  ids = []
  for h, seed, auc in (("ha", 0, 0.7), ("ha", 0, 0.8), ("hb", 1, 0.6)):
    rid = s.claim("exp", f"{h},seed={seed}", {"h": h, "seed": seed},
                  {"h": h}, h, seed, force=True)
    s.log_eval(rid, {"step": 10, "val/t/auc": auc - 0.1, "x": math.nan})
    if h == "hb":
      s.fail(rid, "RuntimeError: boom")
    else:
      s.finish(rid, {"status": "done", "config_hash": h, "seed": seed,
                     "metrics": {"test/t/auc": auc},
                     "train_log": [{"step": 5, "weight/t": 1.0}]})
    ids.append(rid)
  return ids


def test_backup_of_a_postgres_store_is_one_sqlite_file(postgres_target,
                                                       tmp_path, capsys):
  with Store(postgres_target) as s:
    ids = _fill(s)
    want = s.results("exp", latest_only=False)
    evals = [s.eval_history(i) for i in ids]
    trains = [s.eval_history(i, "train") for i in ids]
  out = tmp_path / "copy.db"
  summary = backup.backup(postgres_target, out)
  assert summary["integrity"] == "ok" and summary["foreign_key_errors"] == 0
  assert summary["runs_by_status"] == {"done": 2, "failed": 1}
  assert (summary["runs"], summary["series_rows"],
          summary["final_metrics_rows"]) == (2, 3 * 2 + 2, 2)
  assert not list(tmp_path.glob("copy.db-*"))  # self-contained
  with Store(out, create=False) as s:  # the copy: the same store, ids kept
    assert s.backend == "sqlite"
    assert s.results("exp", latest_only=False) == want
    assert [s.eval_history(i) for i in ids] == evals
    assert [s.eval_history(i, "train") for i in ids] == trains
    assert s.claim("exp", "ha,seed=0", {}, {}, "ha", 0) is None  # done
  assert backup.verify(postgres_target)["attempts"] == 3
  # The CLI: backup, verify and status read the URL.
  assert cli.main(["store", "backup", str(tmp_path / "b.db"), "--store",
                   postgres_target]) == 0
  assert "2 runs (3 attempts: 2 done, 1 failed)" in capsys.readouterr().out
  assert cli.main(["store", "verify", "--store", postgres_target]) == 0
  assert "integrity ok" in capsys.readouterr().out


def test_backup_of_an_empty_database_is_a_clear_error(postgres_target,
                                                      tmp_path):
  with pytest.raises(FileNotFoundError, match="no mtrec tables"):
    backup.backup(postgres_target, tmp_path / "copy.db")
  assert list(tmp_path.iterdir()) == []  # no half file


def test_cli_status_and_export_read_a_postgres_store(postgres_target,
                                                     tmp_path, capsys):
  assert cli.main(["status", "quickstart", "--store", postgres_target]) == 0
  assert "no results store" in capsys.readouterr().out  # nothing created
  with Store(postgres_target) as s:
    _fill(s)
  out = tmp_path / "e.csv"
  assert cli.main(["export", "exp", "--format", "csv", "--out", str(out),
                   "--store", postgres_target]) == 0
  assert len(out.read_text().splitlines()) == 3  # header + 2 runs


def test_the_dialect_translates_placeholders_and_rows(postgres_target):
  conn = postgres.Connection(postgres_target, 1000)
  try:
    row = conn.execute("SELECT ? AS a, ? AS b, '5%' AS c", (1, "x")).fetchone()
    assert (row[0], row["b"], row["c"], row.keys()) == (1, "x", "5%",
                                                        ["a", "b", "c"])
    assert dict(conn.execute("SELECT ?, ? UNION ALL SELECT 'k', 'v'",
                             ("a", "b")).fetchall()) == {"a": "b", "k": "v"}
    with pytest.raises(postgres.PostgresError, match="UndefinedTable"):
      conn.execute("SELECT * FROM no_such_table")
  finally:
    conn.close()


def test_paper_export_reads_a_postgres_store(postgres_target, tmp_path):
  """`mtrec paper --export --store URL` (results/paper.py) takes the URL as
  it is, not as a path (which would read as a missing file)."""
  import json

  import test_paper_partial as partial  # its paper folder and stored run

  from mtrec_jax.results import paper
  d = partial._dir(tmp_path)  # noqa: SLF001
  with pytest.raises(FileNotFoundError, match="no results store"):
    paper.export_from_store(d, postgres_target, only="quickstart")
  partial._store_one_run(postgres_target)  # noqa: SLF001
  assert paper.export_from_store(d, postgres_target, only="quickstart") == [
      d / "results" / "quickstart.jsonl"]
  records = [json.loads(line) for line in
             (d / "results" / "quickstart.jsonl").read_text().splitlines()]
  assert [r["status"] for r in records] == ["done", "missing"]
