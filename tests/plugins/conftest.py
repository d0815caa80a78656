"""The plug-in packages the tests install (see plugin_demo)."""
import sys

import pytest

from mtrec_jax import registry

from plugin_demo import MODULE, make_project, pip_install


@pytest.fixture(scope="session")
def installed_plugins(tmp_path_factory):
  """(good site dir, broken site dir): `demo-plugin` (experiment
  `demo-tiny`, strategy `demo-first_task`) and `broken-plugin`, whose
  module raises on import, each installed into its own folder."""
  root = tmp_path_factory.mktemp("plugins")
  good = make_project(root, "demo-plugin", "mtrec_demo_plugin",
                      MODULE.format(prefix="demo-"),
                      "mtrec_demo_plugin.plugin")
  broken = make_project(
      root, "broken-plugin", "mtrec_broken_plugin",
      "raise RuntimeError('demo plug-in is broken on purpose')\n",
      "mtrec_broken_plugin.plugin")
  sites = root / "site-good", root / "site-broken"
  pip_install(good, sites[0])
  pip_install(broken, sites[1])
  return sites


@pytest.fixture(autouse=True)
def _forget_user_code(tmp_path_factory):
  """What a test's user code registers, and its modules, are gone after it:
  other tests (e.g. one that checks every registered experiment) see the
  bundled registries."""
  base = str(tmp_path_factory.getbasetemp())
  with registry.scratch(registry.EXPERIMENTS, registry.STRATEGIES):
    yield
  for name, module in list(sys.modules.items()):
    if str(getattr(module, "__file__", None) or "").startswith(base):
      del sys.modules[name]
