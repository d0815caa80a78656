"""The results store's two backends for tests: an SQLite file, and a schema
of its own in a PostgreSQL database.

`store_target` (a fixture parametrized over both) gives a fresh, empty
store: a path, or a ``postgresql://`` URL whose ``search_path`` is a new
schema, dropped after the test, so tests never see each other's runs (also
under pytest-xdist).  The database is ``$MTREC_TEST_POSTGRES`` (CI: .ci/run
starts a server and sets it); when unset, one throwaway server per test
process is started from the PostgreSQL binaries found here (``initdb`` on
PATH or in /usr/lib/postgresql/*/bin), and the PostgreSQL cases are skipped,
saying why, only when there are none.  Test modules import what they use:
``from store_backends import store_target``.
"""
from __future__ import annotations

import atexit
import functools
import glob
import os
import pathlib
import shutil
import subprocess
import tempfile
import urllib.parse
import uuid

import pytest

BACKENDS = ("sqlite", "postgresql")


def _bin_dir() -> pathlib.Path | None:
  found = shutil.which("initdb")
  if found:
    return pathlib.Path(found).resolve().parent
  dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3]
                .isdigit() else 0)
  return pathlib.Path(dirs[-1]).parent if dirs else None


@functools.cache
def _database() -> str:
  """The URL of a database the tests may create schemas in (a string that
  starts with 'skip:' and says why when there is none)."""
  url = os.environ.get("MTREC_TEST_POSTGRES", "").strip()
  if url:
    return url
  bin_dir = _bin_dir()
  if bin_dir is None:
    return ("skip: no PostgreSQL here: set MTREC_TEST_POSTGRES=postgresql://"
            "... or install the server (apt-get install postgresql)")
  try:
    import psycopg  # noqa: F401
  except ImportError:
    return "skip: psycopg is not installed: pip install -e '.[test]'"
  root = pathlib.Path(tempfile.mkdtemp(prefix="mtrec-pg-"))
  run_as: list[str] = []
  if os.geteuid() == 0:  # initdb refuses root
    if shutil.which("runuser") is None:
      return "skip: running as root without runuser to start PostgreSQL"
    if subprocess.run(["id", "-u", "postgres"], capture_output=True
                      ).returncode:
      return ("skip: running as root without a 'postgres' user to start "
              "PostgreSQL as (useradd --system postgres, or set "
              "MTREC_TEST_POSTGRES)")
    shutil.chown(root, "postgres")
    run_as = ["runuser", "-u", "postgres", "--"]
  data, port = root / "data", 5400 + os.getpid() % 500

  def run(*argv):
    out = subprocess.run([*run_as, *map(str, argv)], capture_output=True,
                         text=True)
    if out.returncode:
      raise RuntimeError(f"{' '.join(map(str, argv))} failed: {out.stderr}")

  run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "mtrec",
      "--no-sync")
  run(bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
      f"-k {root} -p {port} -c listen_addresses='' -c fsync=off", "start")
  atexit.register(lambda: (subprocess.run(
      [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
       "stop"], capture_output=True), shutil.rmtree(root, True)))
  run(bin_dir / "createdb", "-h", root, "-p", port, "-U", "mtrec",
      "mtrec_test")
  return f"postgresql://mtrec@/mtrec_test?host={root}&port={port}"


def with_schema(url: str, schema: str) -> str:
  """`url` with libpq's options set so its search_path is `schema`."""
  option = urllib.parse.quote(f"-csearch_path={schema}", safe="")
  return f"{url}{'&' if '?' in url else '?'}options={option}"


def postgres_url() -> str:
  """A fresh, empty schema's URL; skips the test when there is no server."""
  url = _database()
  if url.startswith("skip:"):
    pytest.skip(url[len("skip: "):])
  import psycopg
  schema = f"t_{uuid.uuid4().hex[:16]}"
  with psycopg.connect(url, autocommit=True) as conn:
    conn.execute(f"CREATE SCHEMA {schema}")
  return with_schema(url, schema)


def drop(url: str) -> None:
  import psycopg
  schema = urllib.parse.unquote(url).rsplit("search_path=", 1)[1]
  base = url.rsplit("options=", 1)[0].rstrip("?&")
  with psycopg.connect(base, autocommit=True) as conn:
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def store_target(request, tmp_path):
  """A fresh store on each backend: an SQLite path, or a PostgreSQL URL."""
  if request.param == "sqlite":
    yield tmp_path / "m.db"
    return
  url = postgres_url()
  try:
    yield url
  finally:
    drop(url)


@pytest.fixture
def postgres_target():
  """A fresh store's PostgreSQL URL (the tests of that backend alone)."""
  url = postgres_url()
  try:
    yield url
  finally:
    drop(url)
