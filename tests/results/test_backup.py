"""Issue 16 defects 9 and 10: a store is whole in one file after a clean
exit, `mtrec store backup` copies a live store (rows still in the WAL after
a kill) to one self-contained file, `verify` finds damage, a 0-byte store is
not read as empty, a URL is not taken for a path, and filesystem errors and
file modes are handled."""
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from mtrec_jax import cli
from mtrec_jax.results import backup, run_files
from mtrec_jax.results.store import Store


def _finish_one(store: Store, seed: int = 0, name: str = "exp") -> int:
  run_id = store.claim(name, f"seed={seed}", {"seed": seed}, {"lr": 1},
                       "h", seed, {})
  store.finish(run_id, {"status": "done", "config_hash": "h", "seed": seed,
                        "metrics": {"test/a/auc": 0.5 + seed / 100}},
               evals=[{"step": 1, "val/loss": 1.0}])
  return run_id


def _runs_in(path) -> int:
  conn = sqlite3.connect(path)
  try:
    return conn.execute("SELECT count(*) FROM runs").fetchone()[0]
  except sqlite3.OperationalError:  # no table: an empty database
    return 0
  finally:
    conn.close()


def _killed_writer(db: pathlib.Path, n: int) -> None:
  """A process that stores `n` runs and is SIGKILLed holding the store."""
  code = textwrap.dedent(f"""
      import os, signal
      from mtrec_jax.results.store import Store
      s = Store({str(db)!r})
      for seed in range({n}):
        i = s.claim("exp", f"seed={{seed}}", {{"seed": seed}}, {{}}, "h", seed,
                    {{}})
        s.finish(i, {{"status": "done", "config_hash": "h", "seed": seed,
                     "metrics": {{"m": 1.0}}}})
      os.kill(os.getpid(), signal.SIGKILL)
      """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == -9, proc.stderr


def test_after_a_kill_backup_is_one_whole_file(tmp_path, capsys):
  db = tmp_path / "mtrec.db"
  _killed_writer(db, 3)
  wal = pathlib.Path(f"{db}-wal")
  assert wal.exists() and wal.stat().st_size > 0
  # The defect: the committed rows sit in the WAL; mtrec.db alone lacks them.
  shutil.copy(db, tmp_path / "only_main.db")
  assert _runs_in(tmp_path / "only_main.db") == 0
  out = tmp_path / "backups" / "copy.db"
  assert cli.main(["store", "backup", str(out), "--store", str(db)]) == 0
  said = capsys.readouterr().out
  assert "integrity ok" in said and "3 runs" in said and "3 done" in said
  assert not pathlib.Path(f"{out}-wal").exists()
  # One self-contained file: copied alone, it still holds every run.
  shutil.copy(out, tmp_path / "moved.db")
  assert _runs_in(tmp_path / "moved.db") == 3
  with sqlite3.connect(tmp_path / "moved.db") as conn:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
  with Store(tmp_path / "moved.db") as s:
    assert len(s.results("exp")) == 3
  assert cli.main(["store", "verify", "--store", str(out)]) == 0
  assert "integrity ok" in capsys.readouterr().out


def test_backup_of_a_store_being_written(tmp_path):
  db = tmp_path / "mtrec.db"
  writer = Store(db)
  for seed in range(4):
    _finish_one(writer, seed)
  # A claimed, unfinished run of a live process and an open connection.
  writer.claim("exp", "seed=9", {"seed": 9}, {}, "h", 9, {})
  s = backup.backup(db, tmp_path / "b.db")
  assert s["runs_by_status"] == {"done": 4, "running": 1}
  assert s["series_rows"] == 4 and s["final_metrics_rows"] == 4
  _finish_one(writer, 5)  # the store goes on being written
  writer.close()
  assert _runs_in(tmp_path / "b.db") == 5


def test_a_clean_close_leaves_the_rows_in_the_main_file(tmp_path):
  db = tmp_path / "mtrec.db"
  Store(db).close()
  # Another process's open connection: SQLite's own checkpoint at the last
  # close does not happen.
  reader = sqlite3.connect(db)
  reader.execute("SELECT count(*) FROM runs").fetchone()
  with Store(db) as s:
    _finish_one(s)
  assert shutil.copy(db, tmp_path / "copy.db")
  assert _runs_in(tmp_path / "copy.db") == 1
  reader.close()


def test_verify_finds_a_damaged_store(tmp_path, capsys):
  db = tmp_path / "mtrec.db"
  with Store(db) as s:
    for seed in range(30):
      _finish_one(s, seed)
  size = db.stat().st_size
  with open(db, "r+b") as f:  # clobber pages past the header
    f.seek(size // 2)
    f.write(b"\xff" * 4096)
  assert cli.main(["store", "verify", "--store", str(db)]) in (1, 2)
  err = capsys.readouterr().err
  assert "mtrec: error:" in err and str(db) in err
  # A damaged store is not backed up as if it were fine.
  out = tmp_path / "b.db"
  assert cli.main(["store", "backup", str(out), "--store", str(db)]) != 0
  assert not out.exists()


def test_a_zero_byte_store_is_an_error_for_readers(tmp_path, capsys):
  db = tmp_path / "mtrec.db"
  db.touch()
  for argv in (["status", "quickstart"], ["export", "quickstart", "--format",
                                          "csv"], ["store", "verify"]):
    assert cli.main([*argv, "--store", str(db)]) == 2, argv
    err = capsys.readouterr().err
    assert "0-byte" in err and "mtrec store backup" in err, argv
  assert db.stat().st_size == 0  # nothing was written to it
  with pytest.warns(RuntimeWarning, match="0-byte"):  # a writer: a warning
    Store(db).close()


def test_a_url_is_not_taken_for_a_path(tmp_path, monkeypatch, capsys):
  pytest.importorskip("psycopg")
  monkeypatch.chdir(tmp_path)
  url = "postgresql://nobody@127.0.0.1:1/db"  # a PostgreSQL store, no server
  for argv in (["status", "quickstart", "--store", url],
               ["export", "quickstart", "--format", "csv", "--store", url]):
    code = cli.main(argv)
    assert code == 2
    assert "cannot connect to the PostgreSQL" in capsys.readouterr().err
  monkeypatch.setenv("MTREC_STORE", url)
  with pytest.raises(sqlite3.OperationalError, match="cannot connect"):
    Store()
  assert list(tmp_path.iterdir()) == []  # no folder 'postgresql:'


def test_export_to_a_directory_is_a_clear_error(tmp_path, capsys):
  db = tmp_path / "mtrec.db"
  with Store(db) as s:
    _finish_one(s)
  (tmp_path / "outdir").mkdir()
  code = cli.main(["export", "exp", "--format", "csv", "--out",
                   str(tmp_path / "outdir"), "--store", str(db)])
  assert code == 2
  err = capsys.readouterr().err
  assert "is a directory" in err and "Traceback" not in err
  # Other filesystem errors too: a store under a plain file.
  (tmp_path / "file").write_text("x")
  assert cli.main(["export", "exp", "--format", "csv", "--out",
                   str(tmp_path / "file" / "x.csv"), "--store", str(db)]) == 2
  assert "mtrec: error:" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
  db = tmp_path / "mtrec.db"
  with Store(db) as s:
    _finish_one(s)
  old = os.umask(umask)
  try:
    assert run_files.umask() == umask
    with Store(db) as s:
      for fmt in ("csv", "jsonl"):
        s.export("exp", fmt, tmp_path / f"out.{fmt}")
    run_files.write_json(tmp_path / "run" / "result.json", {"a": 1})
    backup.backup(db, tmp_path / "b.db")
  finally:
    os.umask(old)
  want = 0o666 & ~umask
  for name in ("out.csv", "out.jsonl", "run/result.json", "b.db"):
    assert (tmp_path / name).stat().st_mode & 0o777 == want, name
