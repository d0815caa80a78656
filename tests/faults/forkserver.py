"""A fork server for `mtrec run`: imports mtrec_jax once, then forks one
child process per run, which calls `mtrec_jax.cli.main(argv)` as
``python -m mtrec_jax.cli`` would.

Why: the fault suite starts about 20 `mtrec run` processes; each would
otherwise spend most of its time importing JAX, Orbax and the models again
on the shared 2-core CI machine.  The server never initializes a JAX backend
(checked before each fork), so every child starts its own, as a fresh
process does; a child is a real process, so SIGKILL ends it the hard way.

Protocol, one JSON object a line: the server first writes ``{"ready":
true}``; then requests on stdin, each answered on stdout:

- ``{"op": "run", "argv": [...], "cwd": DIR, "env": {...}, "log": FILE}``
  -> ``{"pid": PID}`` (the child's stdout and stderr go to FILE);
- ``{"op": "wait", "pid": PID, "timeout": S}`` -> ``{"code": C,
  "timed_out": B}`` (C as Popen.returncode: -N when signal N ended it; a
  child still running after S seconds is SIGKILLed and B is true).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback

from mtrec_jax import cli  # the heavy imports, done once
from mtrec_jax import sweep  # noqa: F401
from mtrec_jax.train import loop  # noqa: F401
import tensorboardX  # noqa: F401  (the run logger's; it imports torch)


def _backend_started() -> bool:
  from jax._src import xla_bridge
  return bool(getattr(xla_bridge, "_backends", {}))


def _child(req: dict) -> None:
  """Runs in the forked child; never returns."""
  code = 1
  try:
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(req["cwd"])
    os.environ.update(req["env"])
    code = cli.main(req["argv"])
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
  except BaseException:  # noqa: BLE001  (the log shows it; exit 1)
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
  deadline = time.monotonic() + timeout
  timed_out = False
  while True:
    done, status = os.waitpid(pid, 0 if timed_out else os.WNOHANG)
    if done:
      return {"code": os.waitstatus_to_exitcode(status),
              "timed_out": timed_out}
    if time.monotonic() > deadline:
      os.kill(pid, signal.SIGKILL)
      timed_out = True
    else:
      time.sleep(0.02)


def main() -> None:
  out = sys.stdout
  print(json.dumps({"ready": True}), file=out, flush=True)
  for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "run":
      if _backend_started() or threading.active_count() > 1:
        raise RuntimeError("the fork server started JAX or a thread; a "
                           "forked child would inherit it")
      pid = os.fork()
      if pid == 0:
        _child(req)
      reply = {"pid": pid}
    elif req["op"] == "wait":
      reply = _wait(req["pid"], float(req["timeout"]))
    else:
      raise ValueError(f"unknown request {req!r}")
    print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
  main()
