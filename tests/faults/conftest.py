"""Fixtures of the fault-injection suite: one fork server and one
uninterrupted reference run, shared by every test in tests/faults/."""
from __future__ import annotations

import pytest

import faults_harness as h


@pytest.fixture(scope="session")
def fault_tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def server(fault_tmp):
  s = h.Server(fault_tmp)
  yield s
  s.close()


@pytest.fixture(scope="session")
def reference(server, fault_tmp):
  """The uninterrupted run every faulted run must end equal to."""
  assert server.run("reference") == 0, h.log(fault_tmp, "reference")
  folder = h.run_dir(fault_tmp, "reference")
  res = h.result(folder)
  assert res["status"] == "done" and res["steps"] == h.NUM_STEPS
  return folder
