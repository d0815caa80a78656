"""Import layering, read statically (AST) from the source files.

The data flow of docs/design.md, as imports: data, models, tasks and weighting
are libraries the trainer and the results code use, never the other way
round; the data side shares only `mtrec_jax.specs` (and the task specs)
with the models; tasks import neither the models nor Flax; `config.py` and `registry.py` load no model code, so
`mtrec list` starts without flax.  Every import counts, including those
inside functions (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtrec_jax"

# package -> module prefixes it must never import.
FORBIDDEN = {
    "data": ("mtrec_jax.train", "mtrec_jax.results", "mtrec_jax.cli",
             "mtrec_jax.sweep", "mtrec_jax.models"),
    "models": ("mtrec_jax.train", "mtrec_jax.results", "mtrec_jax.cli",
               "mtrec_jax.sweep"),
    # Task logic (specs, targets, losses, metrics) is model-free: the Flax
    # heads of the auxiliary tasks live in models/aux_heads.py.
    "tasks": ("mtrec_jax.train", "mtrec_jax.results", "mtrec_jax.cli",
              "mtrec_jax.sweep", "mtrec_jax.models", "flax"),
    "weighting": ("mtrec_jax.train", "mtrec_jax.results", "mtrec_jax.cli",
                  "mtrec_jax.sweep"),
}
# Modules that must stay light: no model, data, task or trainer code.
LIGHT = {
    "specs.py": ("mtrec_jax", "jax", "flax", "optax", "numpy"),
    "registry.py": ("mtrec_jax", "jax", "flax", "optax"),
    "plugins.py": ("mtrec_jax", "jax", "flax", "optax"),
    "config.py": ("mtrec_jax.models", "mtrec_jax.data", "mtrec_jax.tasks",
                  "mtrec_jax.train", "mtrec_jax.weighting", "jax", "flax",
                  "optax"),
    "experiment.py": ("mtrec_jax.models", "mtrec_jax.data", "mtrec_jax.tasks",
                      "mtrec_jax.train", "mtrec_jax.weighting", "jax", "flax",
                      "optax"),
}
ALLOWED_IN_LIGHT = {"specs.py": (), "registry.py": ("mtrec_jax.plugins",),
                    "plugins.py": (),
                    "config.py": ("mtrec_jax.registry",),
                    "experiment.py": ("mtrec_jax.config", "mtrec_jax.plugins",
                                      "mtrec_jax.registry")}


def imports(path: pathlib.Path, root: pathlib.Path = ROOT
            ) -> list[tuple[int, str]]:
  """(line, module) of every import in a file, relative ones resolved."""
  tree = ast.parse(path.read_text(), str(path))
  package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      out.append((node.lineno, module))
      # `from mtrec_jax import models` imports mtrec_jax.models.
      out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
  return out


def _hits(module: str, prefixes) -> bool:
  return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_import_scan_reads_every_form(tmp_path):
  """The scanner itself: absolute, from, relative and nested imports."""
  pkg = tmp_path / "mtrec_jax" / "data"
  pkg.mkdir(parents=True)
  f = pkg / "x.py"
  f.write_text("import mtrec_jax.train.loop\n"
               "from mtrec_jax import models\n"
               "from ..results import store\n"
               "def f():\n  from mtrec_jax.cli import main\n")
  found = {m for _, m in imports(f, tmp_path)}
  assert {"mtrec_jax.train.loop", "mtrec_jax.models",
          "mtrec_jax.results.store", "mtrec_jax.cli"} <= found
  assert all(_hits(m, FORBIDDEN["data"]) for m in
             ("mtrec_jax.train.loop", "mtrec_jax.models", "mtrec_jax.cli",
              "mtrec_jax.results.store"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(package):
  files = sorted((PACKAGE / package).rglob("*.py"))
  assert files, package
  bad = [f"{f.relative_to(ROOT)}:{line}: {module}"
         for f in files for line, module in imports(f)
         if _hits(module, FORBIDDEN[package])]
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(LIGHT))
def test_core_modules_stay_light(name):
  path = PACKAGE / name
  bad = [f"{name}:{line}: {module}" for line, module in imports(path)
         if _hits(module, LIGHT[name])
         and not _hits(module, ALLOWED_IN_LIGHT[name])]
  assert not bad, "\n".join(bad)
