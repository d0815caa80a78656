"""`provenance.git_state`: the code identity a run records is the checkout
as the process first read it, not as it is when a later run of the same
process starts (a sweep trains for hours while the tree moves on)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from mtrec_jax.results import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None,
                                reason="needs the git executable")


def git(repo, *args):
  return subprocess.run(["git", "-C", str(repo), *args], check=True,
                        capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
  git(tmp_path, "init", "-q")
  git(tmp_path, "config", "user.email", "t@example.com")
  git(tmp_path, "config", "user.name", "t")
  (tmp_path / "code.py").write_text("x = 1\n")
  git(tmp_path, "add", "code.py")
  git(tmp_path, "commit", "-qm", "first")
  yield tmp_path
  provenance.refresh_git_state()


def test_first_read_is_kept_for_the_process(repo):
  first = git(repo, "rev-parse", "HEAD")
  assert provenance.git_state(repo) == {"commit": first, "dirty": False}
  # The tree moves on while the process trains: an edit, then a commit.
  (repo / "code.py").write_text("x = 2\n")
  assert provenance.git_state(repo) == {"commit": first, "dirty": False}
  git(repo, "commit", "-qam", "second")
  assert provenance.git_state(repo) == {"commit": first, "dirty": False}
  # A process that starts now (or reloads its code) reads the new state.
  provenance.refresh_git_state()
  second = git(repo, "rev-parse", "HEAD")
  assert second != first
  assert provenance.git_state(repo) == {"commit": second, "dirty": False}
  (repo / "code.py").write_text("x = 3\n")
  provenance.refresh_git_state()
  assert provenance.git_state(repo) == {"commit": second, "dirty": True}


def test_answers_are_copies(repo):
  state = provenance.git_state(repo)
  state["commit"] = "changed"
  assert provenance.git_state(repo)["commit"] != "changed"


def test_not_a_checkout(tmp_path):
  assert provenance.git_state(tmp_path / "nowhere") == {"commit": None,
                                                        "dirty": None}
