"""Data parallelism: the train step over a ``jax.sharding.Mesh``.

The mesh has two axes, ``("data", "model")``.  The batch's leading axis is
sharded over ``data``; the train state is replicated, except that
``state_sharding(..., shard_embeddings_over_model=True)`` shards large
embedding tables (and their optimizer moments) row-wise over ``model``.
``jit_train_step`` jits the unchanged ``make_train_step`` step with these
in/out shardings.  Every per-task loss is a batch mean, so under ``jit`` the
losses, the per-task Jacobian, its Gramian and the representation gradients
are those of the *global* batch: XLA's partitioner inserts the cross-device
reductions, and every strategy gives what it gives on one device, up to the
order of float sums (tests/train/test_parallel.py checks this on 8 devices).

Typical use (what `loop.py` needs)::

    mesh = parallel.make_mesh(data=None)           # all devices on "data"
    shardings = parallel.state_sharding(state, mesh)
    state = jax.device_put(state, shardings)
    step_fn = parallel.jit_train_step(make_train_step(...), mesh, shardings)
    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))

The batch size must be a multiple of the ``data`` axis size (``shard_batch``
says so, with the fix, when it is not).

``jax.pmap``: in this JAX (0.10) ``jax.pmap`` still exists but is in
maintenance mode: since JAX 0.8 it is implemented with ``jit`` and
``shard_map`` (the old implementation and its ``jax_pmap_shmap_merge`` switch
were removed in 0.9.2), and JAX recommends ``jax.shard_map`` for new code.
The design card's pmapped training is kept as the thin ``pmap_train_step``,
tested equal to the mesh path.  Under ``pmap`` each device sees only its
slice of the batch, so the per-task losses are ``pmean``-ed *before* the
strategy and the parameter gradients are ``psum``-ed inside the backward
pass (custom VJPs around the task losses and the model's parameters): the
Jacobian and Gramian the strategy sees are the global ones.  It covers loss
strategies and ``params``-mode gradient strategies; ``rep`` mode is refused
(step.py forms the representation Gramian from per-device rows, which would
need a psum inside the step), as are auxiliary tasks.  Masked losses (mean
over labelled examples) and dropout make per-device means differ from the
global ones; the mesh path has neither limit.  Prefer the mesh path.

Multi-host: call ``initialize_distributed()`` first thing in the program
(before any JAX computation); it runs ``jax.distributed.initialize()`` when a
cluster launch is detected.  Every process then runs the same program, feeds
its own slice of the global batch (every process draws the same seeded global
batch and keeps its rows, `process_slice`; ``shard_batch`` assembles the
global array with ``jax.make_array_from_process_local_data``), and the mesh
spans the devices of all processes.  Under ``mtrec run``, process 0 alone
claims runs from the results store (and tells the others which), writes the
run files and stores results; every process writes its part of the Orbax
checkpoints, so the run folder must be on a file system all hosts share.
`tests/cli/test_multiprocess.py` runs two processes joined over localhost
and checks they store the numbers of one process with two devices.

* GPU cluster under SLURM, one process per GPU::

      #SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-task=1
      srun python -m mtrec_jax.cli run <experiment> ...

  JAX reads SLURM_JOB_ID / SLURM_STEP_NODELIST / SLURM_NTASKS /
  SLURM_PROCID / SLURM_LOCALID and picks the coordinator itself (set
  JAX_COORDINATOR_PORT if the default port is taken).  Open MPI's mpirun is
  detected the same way.  Any other launcher: set, in every process,
  JAX_COORDINATOR_ADDRESS=host:port (process 0's host), JAX_NUM_PROCESSES
  and JAX_PROCESS_ID (0 .. N-1).
* TPU pod slice: one process per host, started on every worker::

      gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all \\
        --command="cd mtrec-jax && MTREC_DISTRIBUTED=1 \\
                   python -m mtrec_jax.cli run <experiment> ..."

  (a TPU VM's topology comes from its metadata server, which this module
  does not query on its own: MTREC_DISTRIBUTED=1 asks for the call).

Set MTREC_DISTRIBUTED=0 to never initialize, 1 to always.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mtrec_jax.train.optim import key_names
from mtrec_jax.train.step import make_train_step

DATA, MODEL = "data", "model"


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "model") mesh; by default every device sits on "data".

  Axes are of type Auto, so jit propagates shardings (the train step has no
  sharding annotations of its own)."""
  devices = list(jax.devices() if devices is None else devices)
  if model < 1:
    raise ValueError(f"model axis size must be >= 1, got {model}")
  if data is None:
    if len(devices) % model:
      raise ValueError(f"{len(devices)} devices do not split into a model "
                       f"axis of {model}; pick a model size dividing "
                       f"{len(devices)}")
    data = len(devices) // model
  if data < 1 or data * model > len(devices):
    raise ValueError(f"a {data} x {model} (data x model) mesh needs "
                     f"{data * model} devices, but {len(devices)} are "
                     f"available; lower data/model (or set XLA_FLAGS="
                     f"--xla_force_host_platform_device_count=N on CPU)")
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices[:data * model])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis over "data", replicated over "model"."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_slice(batch: Mapping[str, Any]) -> dict[str, Any]:
  """This process's share of a global batch: rows ``[i * n / P, (i + 1) *
  n / P)`` for process i of P (the whole batch in a single process).

  Every process draws the same global batch from the seeded pipeline and
  keeps its own rows, so a run on P hosts trains on exactly the batches of a
  one-process run (`shard_batch` puts the slices back together in process
  order)."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return dict(batch)
  size = len(next(iter(batch.values())))
  if size % count:
    raise ValueError(f"global batch size {size} does not split over "
                     f"{count} processes; choose a multiple of {count}")
  local = size // count
  return {k: v[index * local:(index + 1) * local] for k, v in batch.items()}


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts a batch on the mesh, its leading axis split over "data".

  Single process: `batch` is the global batch.  Several processes (after
  `initialize_distributed`): `batch` is this process's slice, the global batch
  being the processes' slices in process order; the global array is assembled
  with ``jax.make_array_from_process_local_data`` (processes that hold
  replicas over "model" must feed identical slices).
  """
  n = mesh.shape[DATA]
  sizes = {k: (np.shape(v)[0] if np.ndim(v) else None)
           for k, v in batch.items()}
  if None in sizes.values():
    raise ValueError(f"batch entries must have a leading batch axis; "
                     f"scalars: {[k for k, s in sizes.items() if s is None]}")
  if len(set(sizes.values())) > 1:
    raise ValueError(f"batch entries disagree on the batch size: {sizes}")
  local = next(iter(sizes.values()), 0)
  total = local * jax.process_count()
  if total % n:
    up = -(-total // n) * n
    raise ValueError(
        f"batch size {total} does not split over the {n} devices of the "
        f"mesh's 'data' axis; choose a batch size that is a multiple of {n} "
        f"(e.g. {up} or {max(n, up - n)}), or a data axis size that divides "
        f"{total}")
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(dict(batch), sharding)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


JACOBIAN_ENGINES = ("vmap", "unrolled")  # see step.split_jacobian


def jacobian_engine(name: str = "auto", platform: str | None = None) -> str:
  """`train.jacobian_engine` resolved for a platform (default: this one's
  first device): "auto" is "unrolled" on CPU, where the K backward passes
  unrolled inside one jit measured faster than vmapped ones
  (benchmarks/strategies.py), and "vmap" elsewhere; "vmap" and "unrolled"
  stay as they are; anything else is a ValueError naming the choices."""
  if name == "auto":
    platform = platform or jax.devices()[0].platform
    return "unrolled" if platform == "cpu" else "vmap"
  if name not in JACOBIAN_ENGINES:
    raise ValueError(f"train.jacobian_engine {name!r} is not one of auto, "
                     f"{', '.join(JACOBIAN_ENGINES)}")
  return name


def _is_embedding_table(path, leaf, rows_divisor: int) -> bool:
  names = key_names(path)
  return (np.ndim(leaf) == 2 and np.shape(leaf)[0] % rows_divisor == 0
          and any(isinstance(n, str) and n.startswith("embed_") for n in names))


def state_sharding(state, mesh: Mesh,
                   shard_embeddings_over_model: bool = False):
  """A tree of NamedShardings for `state` (any pytree, e.g. a TrainState).

  Everything is replicated, except with `shard_embeddings_over_model`: 2-D
  `embed_*` tables whose rows divide by the "model" axis size are split
  row-wise over "model", and so are the optimizer moments of those tables
  (same path, same shape).  Tables whose rows do not divide stay replicated.
  """
  rep = replicated(mesh)
  n = mesh.shape[MODEL]
  rows = NamedSharding(mesh, P(MODEL, None))
  if not shard_embeddings_over_model or n == 1:
    return jax.tree_util.tree_map(lambda _: rep, state)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: rows if _is_embedding_table(path, leaf, n) else rep,
      state)


def jit_train_step(step_fn: Callable, mesh: Mesh, state_shardings, *,
                   donate: bool = False,
                   compiler_options: Mapping[str, Any] | None = None
                   ) -> Callable:
  """``jax.jit(step_fn)`` with the state kept at `state_shardings`, the batch
  split over "data" and the metrics replicated.

  `donate` reuses the old state's buffers for the new one (less memory); it
  is off by default because a caller that keeps a reference to an old state
  (loop.py keeps `best_params`) would find it deleted.  With it, put a copy
  on the mesh: ``jax.device_put(jax.tree_util.tree_map(jnp.copy, state),
  shardings)``, since `device_put` reuses a buffer already on a target
  device as that device's shard (even with ``may_alias=False``, JAX 0.10.2),
  and donating the shard deletes the original.  `compiler_options`: XLA's,
  as `train/compiler.py` gives them for `train.compiler`.
  """
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)),
                 donate_argnums=(0,) if donate else (),
                 compiler_options=compiler_options)


# --------------------------------------------------------------------- pmap


def _global_mean(axis_name: str, n: int) -> Callable:
  """pmean over devices; its VJP hands each device 1/n of the cotangent (the
  shard's share of the global mean), not pmap's psum of the cotangents."""
  @jax.custom_vjp
  def mean(x):
    return jax.lax.pmean(x, axis_name)

  def fwd(x):
    return mean(x), None

  def bwd(_, ct):
    return (ct / n,)

  mean.defvjp(fwd, bwd)
  return mean


def _summed_cotangent(axis_name: str) -> Callable:
  """Identity whose VJP psums the cotangent: replicated parameters then get
  the gradient of every device's share, i.e. the global gradient."""
  @jax.custom_vjp
  def ident(tree):
    return tree

  def fwd(tree):
    return tree, None

  def bwd(_, ct):
    return (jax.lax.psum(ct, axis_name),)

  ident.defvjp(fwd, bwd)
  return ident


class _SyncedModel:
  """The model, with parameter gradients summed over the pmap axis."""

  def __init__(self, model, sync: Callable):
    self._model, self._sync = model, sync

  def apply(self, variables, *args, **kwargs):
    return self._model.apply({**variables, "params": self._sync(
        variables["params"])}, *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._model, name)


@dataclasses.dataclass(frozen=True)
class _GlobalMeanTask:
  """A task whose loss is the mean of the devices' (equal-size) shard means."""
  task: Any
  mean: Callable

  @property
  def name(self) -> str:
    return self.task.name

  def loss(self, outputs, batch):
    return self.mean(self.task.loss(outputs, batch))

  def __getattr__(self, name):
    return getattr(self.task, name)


def pmap_train_step(model, tasks, strategy, optimizer, mode: str = "",
                    jacobian: str = "vmap",
                    devices: Sequence[jax.Device] | None = None,
                    axis_name: str = "batch") -> Callable:
  """The design card's pmapped train step (prefer `jit_train_step`); one
  process only.

  Returns ``step(state, batch) -> (state, metrics)`` taking the unsharded
  state and the global batch (numpy), split over `devices` (default: all
  local devices); state and metrics come back replicated, equal to the mesh
  path's (see the module docstring for what is covered).
  """
  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices)
  mode = mode or strategy.default_mode
  if strategy.kind != "loss" and mode == "rep":
    raise ValueError(f"pmap_train_step: strategy {strategy.name!r} in rep "
                     f"mode needs the Gramian of the global representation "
                     f"gradients, which the pmapped step does not reduce; "
                     f"use jit_train_step (mesh path) or strategy.mode=params")
  if tuple(getattr(model, "aux_names", ())):
    raise ValueError("pmap_train_step does not support auxiliary tasks (their "
                     "losses are not per-example means); use jit_train_step")
  mean = _global_mean(axis_name, n)
  synced = _SyncedModel(model, _summed_cotangent(axis_name))
  step = make_train_step(synced, tuple(_GlobalMeanTask(t, mean) for t in tasks),
                         strategy, optimizer, mode, jacobian)
  pmapped = jax.pmap(step, axis_name, in_axes=(None, 0), out_axes=(None, None),
                     devices=devices)

  def run(state, batch):
    size = len(next(iter(batch.values())))
    if size % n:
      raise ValueError(f"batch size {size} does not split over {n} devices; "
                       f"choose a batch size that is a multiple of {n}")
    split = {k: np.reshape(np.asarray(v), (n, size // n) + np.shape(v)[1:])
             for k, v in batch.items()}
    return pmapped(state, split)

  return run


# -------------------------------------------------------------- multi-host

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
               "SLURM_PROCID", "SLURM_LOCALID")


def cluster_environment(env: Mapping[str, str] | None = None) -> str | None:
  """Which multi-process launch `env` (default os.environ) shows, or None.

  Reads environment variables only (no network): "forced"
  (MTREC_DISTRIBUTED=1), "coordinator" (JAX_COORDINATOR_ADDRESS), "slurm"
  (srun with more than one task) or "openmpi" (mpirun, more than one rank).
  """
  env = os.environ if env is None else env
  flag = env.get("MTREC_DISTRIBUTED", "").strip().lower()
  if flag in ("0", "false", "no", "off"):
    return None
  if flag in ("1", "true", "yes", "on"):
    return "forced"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "coordinator"
  if all(v in env for v in _SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  return None


def initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
  """Runs ``jax.distributed.initialize()`` when a cluster launch is detected
  (see `cluster_environment` and the module docstring); returns whether JAX
  now runs multi-process.  Call it before any other JAX work."""
  if jax.distributed.is_initialized():
    return True
  kind = cluster_environment(env)
  if kind is None:
    return False
  env = os.environ if env is None else env
  kwargs = {}
  if kind == "coordinator":
    try:
      kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(env["JAX_NUM_PROCESSES"]),
                    process_id=int(env["JAX_PROCESS_ID"]))
    except (KeyError, ValueError) as e:
      raise ValueError(
          f"JAX_COORDINATOR_ADDRESS is set, so every process needs "
          f"JAX_NUM_PROCESSES (the process count) and JAX_PROCESS_ID (0 .. "
          f"count-1) as integers too: {e!r}; set them, or unset "
          f"JAX_COORDINATOR_ADDRESS for a single process") from e
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:
    raise RuntimeError(
        f"jax.distributed.initialize() failed for the detected {kind!r} "
        f"launch: {e}. Check that every process was started (one per GPU "
        f"under srun, one per host on a TPU pod) and that the coordinator "
        f"port is free; set MTREC_DISTRIBUTED=0 to run single-process") from e
  return True
