"""Watches a local Launchpad run from the launcher: no hang, no lost work.

Launchpad's local launchers treat a node whose process was killed as a clean
exit (`local_mp` only sees its output wrapper exit 0) and leave the other
nodes blocked on the dead one. The supervisor runs in the launcher's main
thread instead of `manager.wait()`:

* it starts `local_mp` nodes itself (no colour wrapper, so their exit codes
  are visible; a session of their own, so Ctrl-C reaches only the launcher;
  each line of their output prefixed with the node's name);
* it polls every node; a dead actor's unfinished steps go back to the shared
  step budget (the other actors take them); any other node's death stops
  every node and ends the launcher with exit code 1;
* SIGINT / SIGTERM ask the learner for a checkpoint, stop every node and end
  the launcher with 130 / 143.
"""

import contextlib
import ctypes
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from absl import logging
import courier
import launchpad as lp
from launchpad.launch.run_locally import run_locally

POLL_S = 0.5                   # How often nodes are checked.
STOP_GRACE_S = 10.0            # SIGTERM to SIGKILL when stopping nodes.
RPC_TIMEOUT_S = 30.0           # Launcher -> node calls (checkpoint, release).
STOP_BOUND_S = 30.0            # A stop signal ends every node within this.
# The checkpoint a stop asks for, and then the stop itself, fit in the bound
# (a learner still starting up cannot answer: its last checkpoint stands).
STOP_CHECKPOINT_TIMEOUT_S = STOP_BOUND_S - STOP_GRACE_S - 5.0
EXIT_FAILED = 1
_PR_SET_PDEATHSIG = 1          # prctl(2): signal a child when its parent dies.


def node_name(group: str, index: int, group_size: int) -> str:
  return group if group_size == 1 else f'{group}_{index}'


def describe_exit(code: Optional[int]) -> str:
  if code is None:
    return 'unknown cause'
  if code < 0:
    try:
      return f'killed by {signal.Signals(-code).name}'
    except ValueError:
      return f'killed by signal {-code}'
  return f'exit code {code}'


class ProcessNode:
  """A `local_mp` node: a child process of the launcher."""

  def __init__(self, name: str, process: subprocess.Popen):
    self.name, self._process = name, process

  @property
  def pid(self) -> int:
    return self._process.pid

  def alive(self) -> bool:
    return self._process.poll() is None

  def cause(self) -> str:
    return describe_exit(self._process.poll())

  def clean_exit(self) -> bool:
    return self._process.poll() == 0

  def terminate(self):
    with contextlib.suppress(ProcessLookupError):
      self._process.send_signal(signal.SIGTERM)

  def kill(self):
    with contextlib.suppress(ProcessLookupError):
      self._process.kill()


class ThreadNode:
  """A `local_mt` node: a thread of the launcher (a worker of Launchpad's)."""

  def __init__(self, name: str, worker):
    self.name, self._worker = name, worker

  def alive(self) -> bool:
    return self._worker.thread.is_alive()

  def _error(self):
    if self.alive() or not self._worker.future.done():
      return None
    return self._worker.future.exception()

  def cause(self) -> str:
    error = self._error()
    return f'{type(error).__name__}: {error}' if error else 'returned'

  def clean_exit(self) -> bool:
    return not self.alive() and self._error() is None

  def terminate(self):
    pass  # Threads end with the launcher (they are daemons).

  def kill(self):
    pass


def _die_with_parent():
  # Runs in the child between fork and exec: if the launcher is killed, its
  # nodes go too instead of lingering in their own session.
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _pump_output(title: str, stream, out):
  prefix = f'[{title}] '
  for line in iter(stream.readline, b''):
    out.write(prefix + line.decode('utf-8', 'replace'))
    out.flush()


class _ProcessLaunch:
  """What our `local_mp` launcher returns in place of Launchpad's manager."""

  def __init__(self):
    self.processes: List[subprocess.Popen] = []


def _launch_processes(commands) -> _ProcessLaunch:
  launch = _ProcessLaunch()
  for command in commands:
    env = {**os.environ, **command.env_overrides, 'PYTHONUNBUFFERED': '1'}
    process = subprocess.Popen(
        command.command_as_list, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent)
    threading.Thread(target=_pump_output,
                     args=(command.title, process.stdout, sys.stdout),
                     daemon=True).start()
    launch.processes.append(process)
  return launch


def launch(program, launch_type: str, **launch_kwargs):
  """`lp.launch`es the program; returns {node name: ProcessNode | ThreadNode}."""
  groups = [(label, len(nodes)) for label, nodes in program.groups.items()]
  if launch_type == 'local_mp':
    mode = run_locally.SEPARATE_TERMINAL_CURRENT_TERMINAL
    original = run_locally._LOCAL_LAUNCHER_MAP[mode]  # pylint: disable=protected-access
    run_locally._LOCAL_LAUNCHER_MAP[mode] = _launch_processes  # pylint: disable=protected-access
    try:
      started = lp.launch(program, launch_type=launch_type, terminal=mode,
                          **launch_kwargs)
    finally:
      run_locally._LOCAL_LAUNCHER_MAP[mode] = original  # pylint: disable=protected-access
    processes = iter(started.processes)  # In program.groups order.
    nodes = {node_name(label, i, size): ProcessNode(
        node_name(label, i, size), next(processes))
             for label, size in groups for i in range(size)}
    logging.info('node pids: %s',
                 ' '.join(f'{n}={p.pid}' for n, p in nodes.items()))
    return nodes
  manager = lp.launch(program, launch_type=launch_type, **launch_kwargs)
  return {node_name(label, i, size): ThreadNode(
      node_name(label, i, size), worker)
          for label, size in groups
          for i, worker in enumerate(manager._active_workers[label])}  # pylint: disable=protected-access


def courier_client(handle, timeout_s: float = RPC_TIMEOUT_S):
  """A client to a courier node with a call timeout (Launchpad's has none)."""
  address = handle._address.resolve()  # pylint: disable=protected-access
  return courier.Client(address,
                        call_timeout=datetime.timedelta(seconds=timeout_s))


class Outcome:
  FINISHED, FAILED, STOPPED = 'finished', 'failed', 'stopped'


class Supervisor:
  """Polls the nodes; turns deaths and stop signals into a clean ending."""

  def __init__(self, nodes: Dict[str, object], *, finished: Callable[[], bool],
               release_actor: Callable[[int], int],
               checkpoint: Callable[[], int],
               error_file: Callable[[str], Optional[str]],
               coordinator: str = 'evaluator'):
    self._nodes = dict(nodes)
    self._finished, self._release_actor = finished, release_actor
    self._checkpoint, self._error_file = checkpoint, error_file
    self._coordinator = coordinator
    self._signal = None
    self.message = ''

  def _on_signal(self, signum, frame):
    del frame
    self._signal = signum

  def install_signal_handlers(self):
    # Replaces Launchpad's handlers: a stop is a checkpoint, not a kill.
    signal.signal(signal.SIGINT, self._on_signal)
    signal.signal(signal.SIGTERM, self._on_signal)

  def _actors(self):
    return [n for n in self._nodes if n.startswith('actor')]

  def _cause(self, node) -> str:
    recorded = self._error_file(node.name)
    return recorded or node.cause()

  def run(self) -> int:
    """Returns the launcher's exit code; sets `message`."""
    while True:
      if self._signal is not None:
        return self._stop_on_signal(self._signal)
      for name, node in list(self._nodes.items()):
        if node.alive():
          continue
        if name == self._coordinator and node.clean_exit() and self._finished():
          self.stop_all()
          self.message = 'finished'
          return 0
        if name.startswith('actor'):
          if node.clean_exit():
            del self._nodes[name]  # Its share of the budget is done.
            continue
          del self._nodes[name]
          if self._actors():
            released = self._safe(lambda: self._release_actor(
                int(name.split('_')[-1]) if '_' in name else 0), 'release')
            logging.warning(
                '%s died (%s); its %s unfinished steps go back to the shared '
                'budget for the %d remaining actors', name, self._cause(node),
                released, len(self._actors()))
            continue
        return self._fail(name, self._cause(node))
      time.sleep(POLL_S)

  def _safe(self, call, what):
    try:
      return call()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('%s call failed: %s', what, e)
      return None

  def _fail(self, name, cause) -> int:
    self.stop_all()
    self.message = (f'error: run failed: {name} died ({cause}); '
                    'resume with the same --workdir')
    return EXIT_FAILED

  def _stop_on_signal(self, signum) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # A second Ctrl-C waits.
    name = signal.Signals(signum).name
    if self._finished():
      self.stop_all()
      self.message = 'finished'
      return 0
    logging.warning('%s: checkpointing, then stopping every node', name)
    steps = self._safe(self._checkpoint, 'checkpoint')
    self.stop_all()
    if steps is None:
      self.message = (f'stopped by {name}; the checkpoint failed, the last '
                      'periodic one stands; resume with the same --workdir')
    else:
      self.message = (f'stopped by {name} after a checkpoint at learner step '
                      f'{steps}; resume with the same --workdir')
    return 128 + signum

  def stop_all(self):
    nodes = list(self._nodes.values())
    for node in nodes:
      node.terminate()
    deadline = time.time() + STOP_GRACE_S
    while time.time() < deadline and any(n.alive() for n in nodes):
      time.sleep(POLL_S / 5)
    for node in nodes:
      if node.alive():
        node.kill()
