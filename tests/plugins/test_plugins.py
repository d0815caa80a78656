"""Plug-ins: an installed package's entry point, `module:NAME` and
`file.py:NAME` experiments, and the errors of each (mtrec_jax.plugins)."""
import json
import pathlib
import sys

import pytest

from mtrec_jax import cli, plugins
from mtrec_jax.registry import EXPERIMENTS

from plugin_demo import mtrec, write_module


def test_installed_plugin_runs_its_experiment_with_its_strategy(
    installed_plugins, tmp_path):
  """`pip install` a package with an entry point in mtrec_jax.plugins; its
  experiment and strategy are listed, and `mtrec run` trains with them."""
  site, _ = installed_plugins
  listed = mtrec("list", site=site)
  assert listed.returncode == 0, listed.stderr
  line = [l for l in listed.stdout.splitlines() if l.startswith("demo-tiny")]
  assert line and "mean vs demo-first_task" in line[0]
  assert "[mtrec_demo_plugin.plugin]" in line[0]  # where it comes from
  strategies = mtrec("list", "strategies", site=site)
  assert strategies.returncode == 0, strategies.stderr
  assert any(l.startswith("demo-first_task ") and "first task" in l
             for l in strategies.stdout.splitlines())
  assert "mgda " in strategies.stdout  # next to the bundled ones
  log = tmp_path / "built.log"
  ran = mtrec("run", "demo-tiny", "--workdir", str(tmp_path / "runs"),
              "--store", str(tmp_path / "s.db"), "--no-progress",
              site=site, env={"DEMO_PLUGIN_LOG": str(log)})
  assert ran.returncode == 0, ran.stderr
  assert "demo-tiny: test metrics" in ran.stdout
  assert "2 done" in ran.stdout
  (folder,) = (tmp_path / "runs" / "demo-tiny").glob(
      "strategy=demo-first_task,seed=0@*")
  result = json.loads((folder / "result.json").read_text())
  assert result["status"] == "done" and result["steps"] == 4
  assert result["experiment"] == "demo-tiny"
  config = json.loads((folder / "config.json").read_text())
  assert config["strategy"]["name"] == "demo-first_task"
  # The plug-in's factory built the strategy in the run's process.
  assert "demo-first_task built" in log.read_text()
  # Closest-name errors know plug-in names too.
  typo = mtrec("show", "demo-tiyn", site=site)
  assert typo.returncode == 2
  assert "Did you mean 'demo-tiny'" in typo.stderr
  typo = mtrec("show", "demo-tiny", "--set", "strategy.name=demo-first_tsk",
               site=site)
  assert typo.returncode == 2 and "demo-first_task" in typo.stderr


def test_broken_plugin_is_one_clear_error(installed_plugins):
  good, broken = installed_plugins
  out = mtrec("list", site=broken)
  assert out.returncode == 2
  err = out.stderr
  assert "plug-in 'broken_plugin'" in err  # the entry point's name
  assert "mtrec_broken_plugin.plugin" in err and "'broken-plugin'" in err
  assert "RuntimeError: demo plug-in is broken on purpose" in err
  assert "plugin.py:1" in err  # where in the plug-in it raised
  assert "Traceback" not in err and "MTREC_PLUGINS=0" in err
  # The escape hatch: without plug-ins, the bundled experiments still work.
  out = mtrec("list", site=broken, env={"MTREC_PLUGINS": "0"})
  assert out.returncode == 0 and "quickstart" in out.stdout


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """A module `mtrec_user_mod` on sys.path registering `mod-tiny`."""
  write_module(tmp_path / "mtrec_user_mod.py", "mod-")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(plugins._state, "user_code", False)
  return "mtrec_user_mod"


def test_module_spec_shows_and_lists(user_module, capsys):
  assert cli.main(["show", f"{user_module}:mod-tiny"]) == 0
  out = capsys.readouterr().out
  assert "mean vs mod-first_task" in out
  assert "# strategy=mod-first_task,seed=0" in out
  assert plugins.involved()  # user code: the live registries are read now
  # Imported once, registered: the plain name works from now on.
  assert "mod-tiny" in EXPERIMENTS
  assert cli.main(["show", "mod-tiny", "--only",
                   "strategy=mean"]) == 0
  # A module attribute that is not registered: a function returning one.
  assert cli.main(["show", f"{user_module}:unregistered"]) == 0
  assert "defines but does not register" in capsys.readouterr().out


def test_file_spec_status_and_table(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(plugins._state, "user_code", False)
  path = write_module(tmp_path / "my_experiments.py", "file-")
  spec = f"{path}:file-tiny"
  store = tmp_path / "s.db"
  assert cli.main(["status", spec, "--store", str(store)]) == 0
  out = capsys.readouterr().out
  assert "strategy=file-first_task,seed=0" in out
  assert "file-tiny: 2 runs: 2 missing" in out
  # The file is imported once (under a name of its own) however often.
  assert cli.main(["show", spec]) == 0
  assert sum(getattr(m, "__file__", None) == str(path.resolve())
             for m in list(sys.modules.values())) == 1


def test_module_spec_found_in_the_current_folder(tmp_path, monkeypatch,
                                                 capsys):
  """`mtrec` as a console script has no '' on sys.path; a module spec still
  finds a module of the current folder, as `python -m` would."""
  monkeypatch.setitem(plugins._state, "user_code", False)
  write_module(tmp_path / "mtrec_cwd_mod.py", "cwd-")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path
                                    if p not in ("", str(tmp_path))])
  assert cli.main(["show", "mtrec_cwd_mod:cwd-tiny", "--only",
                   "strategy=cwd-first_task"]) == 0
  assert "# strategy=cwd-first_task,seed=0" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:tiny", "no module named 'no_such_module_xyz'"),
    ("mtrec_user_mod:mod-tinny", "Did you mean 'mod-tiny'"),
    ("mtrec_user_mod:", "write my_pkg.module:NAME or path/to/file.py:NAME"),
    ("missing/dir/exps.py:tiny", "no file missing/dir/exps.py"),
])
def test_spec_errors_name_the_problem(user_module, capsys, spec, message):
  assert cli.main(["show", spec]) == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert "Traceback" not in err


def test_spec_whose_module_raises_says_where(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(plugins._state, "user_code", False)
  bad = tmp_path / "bad_exps.py"
  bad.write_text("import os\n\nx = 1 / 0\n")
  assert cli.main(["show", f"{bad}:tiny"]) == 2
  err = capsys.readouterr().err
  assert "ZeroDivisionError: division by zero" in err
  assert f"{bad}:3" in err
  # A module that imports a missing package is not "no module named bad".
  (tmp_path / "needs_dep.py").write_text("import not_installed_dep_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert cli.main(["show", "needs_dep:tiny"]) == 2
  err = capsys.readouterr().err
  assert "importing 'needs_dep' raised ModuleNotFoundError" in err
  assert "not_installed_dep_xyz" in err
  # Not a module's fault: the bundled names still resolve.
  assert cli.main(["show", "quickstart", "--only", "model=mmoe"]) == 0
