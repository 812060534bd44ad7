"""program.lower_priority: the actor and evaluator processes' CPU priority.

Each case runs in a fresh process (priority cannot be raised back without
privileges): every thread, those running before the call and one started
after it, must end with the added niceness and, with `idle`, SCHED_IDLE.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT_TIMEOUT_S = 120  # Imports (TF, Launchpad) take a few seconds.

SCRIPT = r'''
import json, os, sys, threading
from iql_acme import program

def priority(tid):
  return [os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid)]

release = threading.Event()
early = threading.Thread(target=release.wait, daemon=True)
early.start()
try:
  before = priority(early.native_id)
  program.lower_priority(int(sys.argv[1]), idle=sys.argv[2] == 'idle')
  later = {}
  def record():
    later['priority'] = priority(threading.get_native_id())
  late = threading.Thread(target=record)
  late.start()
  late.join()
  threads = {}
  for tid in os.listdir('/proc/self/task'):
    try:
      threads[tid] = priority(int(tid))
    except ProcessLookupError:
      pass  # A thread that ended meanwhile (the late one).
  assert str(early.native_id) in threads
finally:
  release.set()
print(json.dumps({'before': before, 'threads': threads,
                  'later': later['priority']}))
'''


def _priorities(niceness: int, mode: str) -> dict:
  out = subprocess.run([sys.executable, '-c', SCRIPT, str(niceness), mode],
                       capture_output=True, text=True, check=True,
                       timeout=SCRIPT_TIMEOUT_S,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('mode,policy', [('idle', os.SCHED_IDLE),
                                         ('normal', os.SCHED_OTHER)])
def test_every_thread_gets_the_niceness_and_policy(mode, policy):
  result = _priorities(7, mode)
  base_nice, base_policy = result['before']
  assert base_policy == os.SCHED_OTHER
  assert len(result['threads']) >= 2  # The main thread and the early one.
  for tid, (nice, thread_policy) in result['threads'].items():
    assert nice == base_nice + 7, tid
    assert thread_policy == policy, tid
  assert result['later'] == [base_nice + 7, policy]  # Inherited.


def test_zero_niceness_and_no_idle_change_nothing():
  result = _priorities(0, 'normal')
  for nice, thread_policy in result['threads'].values():
    assert [nice, thread_policy] == result['before']
