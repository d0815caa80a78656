"""Shared test setup: CPU only, one device in-process, quiet logs."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest


@pytest.fixture(autouse=True)
def _private_results_store(tmp_path, monkeypatch):
  """Every test gets its own results store, so none writes ./results/ in
  the checkout or sees another test's runs."""
  monkeypatch.setenv("MTREC_STORE", str(tmp_path / "mtrec-store.db"))
