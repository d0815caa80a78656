"""Helpers of the plug-in tests: a throwaway plug-in package (one tiny
experiment, one strategy of its own), built and pip-installed offline."""
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The user's module: a strategy that puts all weight on the first task and
# notes each build in $DEMO_PLUGIN_LOG (so a test sees that the run used
# it), and a two-run experiment: the bundled `mean` vs that strategy.
MODULE = '''
"""Demo mtrec plug-in."""
import os

from mtrec_jax.config import base_config
from mtrec_jax.experiment import Axis, Experiment
from mtrec_jax.registry import EXPERIMENTS, STRATEGIES


@STRATEGIES.register("{prefix}first_task")
def first_task(weight: float = 1.0):
  """Weight `weight` on the first task, 0 on the others."""
  import jax.numpy as jnp
  from mtrec_jax.weighting.base import Strategy, Weighting
  log = os.environ.get("DEMO_PLUGIN_LOG")
  if log:
    with open(log, "a") as f:
      f.write("{prefix}first_task built\\n")

  def init(num_tasks):
    return {{"weights": jnp.zeros(num_tasks).at[0].set(weight)}}

  def weigh(state, *, losses, step, key):
    del losses, step, key
    return Weighting(state["weights"], state, {{}})

  return Strategy(name="{prefix}first_task", kind="loss", init=init,
                  weigh=weigh, hparams={{"weight": weight}})


def tiny_config():
  c = base_config()
  c.data.name = "mmoe_synthetic"
  c.data.correlation = 0.5
  c.data.n_train = 256
  c.data.n_val = 64
  c.data.n_test = 64
  c.model.name = "shared_bottom"
  c.model.bottom_hidden = (8,)
  c.model.tower_hidden = (4,)
  c.train.batch_size = 32
  c.train.num_steps = 4
  c.train.eval_every = 2
  return c


@EXPERIMENTS.register("{prefix}tiny")
def tiny():
  """Demo plug-in: mean vs {prefix}first_task on tiny synthetic data."""
  return Experiment(tiny_config(), axes=(Axis(
      "strategy", "strategy.name", ("mean", "{prefix}first_task")),),
      seeds=(0,))


def unregistered():
  """An experiment the module defines but does not register."""
  return Experiment(tiny_config(), seeds=(0,))
'''


def write_module(path: pathlib.Path, prefix: str) -> pathlib.Path:
  """The demo module with names `<prefix>tiny` and `<prefix>first_task`
  (each test source registers its own names: registries refuse twins)."""
  path.write_text(MODULE.format(prefix=prefix))
  return path


def pip_install(project: pathlib.Path, target: pathlib.Path) -> None:
  """A real, offline install (no index, no build isolation: the installed
  setuptools builds it) into `target`, which tests put on PYTHONPATH."""
  done = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
       "--no-index", "--no-build-isolation", "--disable-pip-version-check",
       "--target", str(target), str(project)],
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, (
      f"pip could not install {project.name} (setuptools>=70.1 from the "
      f"'test' extra builds it):\n{done.stdout}\n{done.stderr}")


def make_project(root: pathlib.Path, dist: str, package: str,
                 module_text: str, entry_point: str) -> pathlib.Path:
  project = root / dist
  (project / package).mkdir(parents=True)
  (project / package / "__init__.py").write_text("")
  (project / package / "plugin.py").write_text(module_text)
  (project / "pyproject.toml").write_text(textwrap.dedent(f'''
      [build-system]
      requires = ["setuptools"]
      build-backend = "setuptools.build_meta"

      [project]
      name = "{dist}"
      version = "0.0.1"

      [project.entry-points."mtrec_jax.plugins"]
      {dist.replace("-", "_")} = "{entry_point}"

      [tool.setuptools]
      packages = ["{package}"]
      '''))
  return project


def mtrec(*argv, site=None, env=None, timeout=300):
  """`mtrec ARGV` in a fresh process (at nice 10), `site` on its path."""
  full = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
              **(env or {}))
  path = [str(ROOT)] + ([str(site)] if site else [])
  full["PYTHONPATH"] = os.pathsep.join(path + [full.get("PYTHONPATH", "")])
  return subprocess.run(
      ["nice", "-n", "10", sys.executable, "-m", "mtrec_jax.cli", *argv],
      capture_output=True, text=True, env=full, timeout=timeout, cwd=ROOT)
