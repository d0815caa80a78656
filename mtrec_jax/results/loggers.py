"""Where a run's scalars go besides metrics.jsonl: TensorBoard, W&B.

`make_loggers(config, workdir)` reads the ``log.*`` keys:

* ``log.tensorboard`` (on): event files in ``<run dir>/tensorboard/``, for
  ``tensorboard --logdir runs/``.  Written with tensorboardX, which needs no
  TensorFlow.  A run without a run directory writes none.
* ``log.wandb`` (off): a Weights & Biases run (``pip install wandb``) in
  project ``log.wandb_project`` / entity ``log.wandb_entity``, mode
  ``log.wandb_mode``: "offline" (the default) sends nothing and keeps the
  run under ``<run dir>/wandb/`` for ``wandb sync``; "online" uploads.

Tags are the keys of the run's records: ``loss/<task>``, ``weight/<task>``,
``cos/<a>/<b>`` (train log), ``val/...`` (evaluations) and ``final/val/...``,
``final/test/...`` (the selected parameters, at the last step).  NaN and inf
are written as they are (TensorBoard and W&B both show them), where
metrics.jsonl has null: a diverging metric stays visible.

Resuming: each attempt writes its own event file, which opens with a
SessionLog START at its first new step.  A resumed run repeats the steps
after its checkpoint, with the same values (a resumed run recomputes them
exactly), and TensorBoard shows each step once: its Python loaders drop
every point from a restart's START step on, its data server the points of a
tag at and after a step written again (`read_tensorboard_scalars` does
both).  A run that starts over (no resume, or no usable checkpoint) deletes
the event files of earlier attempts, as it does metrics.jsonl.  W&B sees
each attempt as a new run that starts at the resumed step.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
import time
from typing import Any, Mapping

TENSORBOARD_DIR = "tensorboard"
WANDB_MODES = ("offline", "online", "disabled")
# The values of the log.* keys when a config lacks them (an older config).
DEFAULTS = {"tensorboard": True, "wandb": False, "wandb_project": "mtrec-jax",
            "wandb_entity": "", "wandb_mode": "offline"}
_EVENTS = "events.out.tfevents."


def _numbers(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
  """`values` as floats under `prefix`; None (no value) is left out."""
  out = {}
  for key, value in values.items():
    if value is None:
      continue
    try:
      out[prefix + key] = float(value)
    except (TypeError, ValueError):
      raise TypeError(f"logged value {key!r} = {value!r} is not a number; "
                      f"log scalars only") from None
  return out


class RunLogger:
  """Sends a run's scalars to each enabled sink (none: does nothing).

  Use as a context manager, or call `close()`: that flushes the event
  files and finishes the W&B run."""

  def __init__(self, sinks=()):
    self.sinks = list(sinks)

  def start(self, step: int, resumed: bool) -> None:
    """Says where training starts: `resumed` from a checkpoint at `step`,
    or over from step 0 (earlier attempts' event files are deleted)."""
    for sink in self.sinks:
      sink.start(step, resumed)

  def scalars(self, step: int, values: Mapping[str, Any],
              prefix: str = "") -> None:
    """Logs `values` ({tag: number}) at `step`, each tag with `prefix`."""
    numbers = _numbers(values, prefix)
    if numbers:
      for sink in self.sinks:
        sink.scalars(int(step), numbers)

  def close(self, failed: bool = False) -> None:
    """Closes every sink, even when one fails (the first error is raised)."""
    error = None
    for sink in self.sinks:
      try:
        sink.close(failed)
      except Exception as e:  # the others still close
        error = error or e
    self.sinks = []
    if error is not None:
      raise error

  def __enter__(self) -> RunLogger:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(failed=exc_type is not None)


class TensorBoardLogger:
  """Event files in `logdir`; the file opens at `start` or the first write.

  Each event is written and flushed before `scalars` returns (tensorboardX's
  EventsWriter; its FileWriter would queue them for a thread that flushes
  every two minutes), so a killed run keeps all it logged."""

  def __init__(self, logdir: str | pathlib.Path):
    try:
      import tensorboardX  # noqa: F401  (a dependency; fail at setup)
    except ImportError as e:
      raise ImportError(
          "log.tensorboard needs the tensorboardX package, a dependency of "
          "mtrec-jax: pip install -e . (or set log.tensorboard=False)") from e
    self.logdir = pathlib.Path(logdir)
    self._writer = None

  def _open(self):
    from tensorboardX.event_file_writer import EventsWriter
    self.logdir.mkdir(parents=True, exist_ok=True)
    # tensorboardX names files by the second and host only; the suffix keeps
    # two attempts in one second apart and in name (= load) order.
    self._writer = EventsWriter(str(self.logdir / "events"),
                                f".{time.time_ns()}.{os.getpid()}")

  def _write(self, step: int, **fields) -> None:
    from tensorboardX.proto.event_pb2 import Event
    self._writer.write_event(Event(wall_time=time.time(), step=step,
                                   **fields))
    self._writer.flush()

  def start(self, step: int, resumed: bool) -> None:
    if self._writer is not None:
      raise RuntimeError("TensorBoardLogger.start comes before any scalars")
    if not resumed:
      for old in self.logdir.glob(_EVENTS + "*"):
        old.unlink()
    self._open()
    # TensorBoard's Python loader takes the first START for the start of the
    # run and purges at the ones after, so a fresh attempt writes one too.
    from tensorboardX.proto.event_pb2 import SessionLog
    self._write(step + 1, session_log=SessionLog(status=SessionLog.START))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    from tensorboardX.proto.summary_pb2 import Summary
    if self._writer is None:
      self._open()
    # Summary.Value directly: tensorboardX.summary.scalar would rewrite tags
    # with characters outside [-/\w.] (e.g. ndcg@10).
    self._write(step, summary=Summary(value=[
        Summary.Value(tag=k, simple_value=v) for k, v in values.items()]))

  def close(self, failed: bool = False) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class WandbLogger:
  """One Weights & Biases run; `close` finishes it."""

  def __init__(self, opts: Mapping[str, Any], config_dict: dict,
               workdir: pathlib.Path | None):
    mode = opts["wandb_mode"]
    if mode not in WANDB_MODES:
      raise ValueError(f"log.wandb_mode {mode!r} is not one of "
                       f"{', '.join(WANDB_MODES)} (offline keeps the run "
                       f"local for `wandb sync`)")
    try:
      import wandb
    except ImportError as e:
      raise ImportError(
          "log.wandb = True logs to Weights & Biases, but the wandb package "
          "is not installed: pip install wandb (or set log.wandb=False)"
      ) from e
    self._run = wandb.init(
        project=opts["wandb_project"] or None,
        entity=opts["wandb_entity"] or None, mode=mode,
        dir=str(workdir) if workdir is not None else None,
        name=workdir.name if workdir is not None else None,
        config=config_dict)

  def start(self, step: int, resumed: bool) -> None:
    pass  # each attempt is its own W&B run; its steps start where it does

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._run.log(dict(values), step=step)

  def close(self, failed: bool = False) -> None:
    if self._run is not None:
      self._run.finish(exit_code=1 if failed else 0)
      self._run = None


def log_options(config) -> dict[str, Any]:
  """The config's ``log.*`` values, with `DEFAULTS` for missing keys."""
  section = config.get("log")
  return {**DEFAULTS, **(section.to_dict() if section is not None else {})}


def make_loggers(config, workdir: str | pathlib.Path | None) -> RunLogger:
  """The run's loggers as its config asks (see the module docstring).

  Fails here, before training, when W&B is asked for but not installed."""
  opts = log_options(config)
  workdir = pathlib.Path(workdir) if workdir is not None else None
  sinks = []
  if opts["tensorboard"] and workdir is not None:
    sinks.append(TensorBoardLogger(workdir / TENSORBOARD_DIR))
  if opts["wandb"]:
    sinks.append(WandbLogger(opts, json.loads(config.to_json()), workdir))
  return RunLogger(sinks)


# Reading event files back, without TensorBoard (tests, quick checks).

def _records(path: pathlib.Path):
  """The records of a TFRecord file: length, masked CRC32C of the length,
  data, masked CRC32C of the data.  A torn last record (a killed writer)
  ends the file; a wrong checksum is an error."""
  from tensorboardX.record_writer import masked_crc32c
  data = path.read_bytes()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (length,), (header_crc,) = (struct.unpack("<Q", header),
                                struct.unpack("<I", data[pos + 8:pos + 12]))
    if masked_crc32c(header) != header_crc:
      raise ValueError(f"{path}: bad length checksum at byte {pos}; the "
                       f"file is damaged")
    end = pos + 12 + length
    if end + 4 > len(data):
      return
    body = data[pos + 12:end]
    if masked_crc32c(body) != struct.unpack("<I", data[end:end + 4])[0]:
      raise ValueError(f"{path}: bad data checksum at byte {pos}; the file "
                       f"is damaged")
    yield body
    pos = end + 4


def read_tensorboard_scalars(logdir: str | pathlib.Path
                             ) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} as TensorBoard shows a run's event files:
  files in name order; a point replaces the tag's points at and after its
  step, and a SessionLog START at step s drops every point from s on."""
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  series: dict[str, dict[int, float]] = {}
  for path in sorted(pathlib.Path(logdir).glob(_EVENTS + "*")):
    for record in _records(path):
      event = Event.FromString(record)
      if (event.HasField("session_log") and
          event.session_log.status == SessionLog.START):
        for points in series.values():
          for s in [s for s in points if s >= event.step]:
            del points[s]
      for value in event.summary.value:
        if value.HasField("simple_value"):
          points = series.setdefault(value.tag, {})
          for s in [s for s in points if s >= event.step]:
            del points[s]
          points[event.step] = value.simple_value
  return {tag: sorted(points.items()) for tag, points in series.items()
          if points}

