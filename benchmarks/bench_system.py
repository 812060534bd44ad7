"""System throughput: learner alone, actors alone, and the paced online phase.

In one run, on the real parts (the project's `IQLLearner`, `ActorNode`,
Reverb server, counter and evaluator; default pen-binary-v0 with its embedded
stand-in dataset):

  learner-only  `IQLLearner.step()` in this process, nothing else running:
                its offline phase (the rate the online phase is compared
                with; measured again after each online run, and each run
                is compared with the mean of the rates just before and
                after it: the shared machine's speed drifts), and its
                online call fed the same real replay rows (a full queue's
                worth) over and over: the online update's compute alone,
                with the rows' append, no Reverb. Same config, batch size
                and offline dataset as the online phase.
  actors-only   N real `ActorNode`s in their own processes stepping the
                environment and inserting into a Reverb table with no rate
                limiter; the policy comes from a stub parameter server (no
                learner). The rate is the actors' own (first action to
                last): the runs are too short for the counter's windows.
  online        the real Launchpad program (`program.make_program`, the
                nodes `make run` starts, under the launcher's supervisor,
                `local_mp`): a short offline phase, then N actors at
                `updates_per_env_step` (1:1) paced by the learner's Reverb
                queue.
                Rates are read from the counter over a steady window
                (`--warmup_frac` of the env steps skipped at each end);
                the CPU each node used in that window is read from /proc.
                It also reports the phase boundary: how long the first
                online update took (the learner's log line). Each actor
                count runs --repeats times, interleaved (1, 2, 4, 1, 2,
                4, ...): one run's share swings by about +-5 points on
                this shared machine, so the summary is the mean share with
                its standard error.

Why the real Launchpad program for the online rate: what holds the rate
back lies between processes (gRPC reads and inserts, the pacing,
parameter fetches, CPU contention), so threads in one process (one GIL)
would measure something else. Evaluation is reduced to one episode at the
offline end and at the end (`make run` also evaluates every 5,000 updates).

Usage: python benchmarks/bench_system.py [--actors 1,2,4] [--online_steps 10000]
         [--actor_steps 4000] [--offline_steps 200] [--learner_seconds 20]
         [--rate_limit_tolerance_steps T] [--actor_niceness 10]
         [--[no-]actor_idle_scheduling] [--repeats R]
Node output goes to WORKDIR/{actors,online}-N[-R]/nodes.log. About 15 minutes
(3 repeats; 13 with --skip_actors_only).
The last line printed is a JSON object with the figures.
"""

import argparse
import dataclasses
import glob
import io
import itertools
import json
import os
import sys
import tempfile
import threading
import time

# The repository root, for `python benchmarks/bench_system.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from acme import specs
import jax
import launchpad as lp
import numpy as np
import psutil
import reverb

from iql_acme import envs
from iql_acme import learning
from iql_acme import networks as networks_lib
from iql_acme import placement
from iql_acme import program as program_lib
from iql_acme import run_setup
from iql_acme import supervisor
from iql_acme.builder import IQLBuilder
# pylint: enable=g-import-not-at-top,wrong-import-position

POLL_S = 0.5                # Counter and CPU sampling period.
PROGRESS_EVERY_S = 5.0      # Progress lines while a program runs.
START_TIMEOUT_S = 300       # A program that shows no progress for this long.
FIRST_ONLINE_LOG = 'first online update '
DEFAULT_ACTORS = '1,2,4'
LEARNER_ONLY_OFFLINE_STEPS = 10**9  # An offline phase that outlasts the timing.


def log(message: str):
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def load_average() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


class NodeOutput(io.TextIOBase):
  """Where the nodes' output goes: a file, plus the lines we look for."""

  def __init__(self, path: str):
    super().__init__()
    self._file = open(path, 'a')  # pylint: disable=consider-using-with
    self.first_online_s = None

  def write(self, text):
    self._file.write(text)
    if FIRST_ONLINE_LOG in text and self.first_online_s is None:
      tail = text.split(FIRST_ONLINE_LOG, 1)[1].strip()
      self.first_online_s = float(tail.split('s', 1)[0])
    return len(text)

  def flush(self):
    self._file.flush()


def launch(program, output: NodeOutput):
  """The launcher's own `local_mp` launch; node output goes to `output`."""
  real_stdout, sys.stdout = sys.stdout, output
  try:
    return supervisor.launch(program, 'local_mp',
                             local_resources=placement.local_resources())
  finally:
    sys.stdout = real_stdout


class Monitor:
  """Polls the counter and each node's CPU time in a thread."""

  def __init__(self, counter_handle, nodes):
    self.samples = []   # (time, actor_steps, learner_steps, {node: cpu s})
    self._counter = counter_handle
    self.error = None
    self._procs = {name: psutil.Process(node.pid)
                   for name, node in nodes.items()}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _cpu(self):
    out = {}
    for name, proc in self._procs.items():
      try:
        times = proc.cpu_times()
        out[name] = times.user + times.system
      except psutil.Error:
        pass
    return out

  def _run(self):
    client = None
    while not self._stop.is_set():
      try:
        client = client or supervisor.courier_client(self._counter, 5.0)
        counts = client.get_counts()
        self.samples.append((time.time(), int(counts.get('actor_steps', 0)),
                             int(counts.get('learner_steps', 0)), self._cpu()))
      except Exception as e:  # pylint: disable=broad-except
        self.error = e  # Not up yet, or already stopped.
      self._stop.wait(POLL_S)

  def stop(self):
    self._stop.set()
    self._thread.join()

  def latest(self):
    return self.samples[-1] if self.samples else (time.time(), 0, 0, {})


def window(samples, total: int, warmup_frac: float):
  """First and last samples with env steps inside the steady window."""
  low, high = warmup_frac * total, (1 - warmup_frac) * total
  inside = [s for s in samples if low <= s[1] <= high]
  if len(inside) < 2:
    raise RuntimeError(f'too few samples in the steady window ({len(inside)}); '
                       'pass a larger --online_steps')
  return inside[0], inside[-1]


def cores_used(first, last):
  elapsed = last[0] - first[0]
  return {name: round((last[3][name] - first[3].get(name, 0.0)) / elapsed, 3)
          for name in last[3]}


def wait_while(condition, monitor: Monitor, what: str):
  last_log, progress, last_change = 0.0, None, time.time()
  while condition():
    now, actor_steps, learner_steps, _ = monitor.latest()
    if (actor_steps, learner_steps) != progress:
      progress, last_change = (actor_steps, learner_steps), time.time()
    elif time.time() - last_change > START_TIMEOUT_S:
      raise RuntimeError(f'{what}: no progress for {START_TIMEOUT_S}s')
    if now - last_log >= PROGRESS_EVERY_S:
      log(f'  {what}: {actor_steps} env steps, {learner_steps} learner steps'
          + (f' ({monitor.error})' if monitor.error and not progress[0] else ''))
      last_log = now
    time.sleep(POLL_S)


# --- learner-only -------------------------------------------------------------

def replay_sample(builder, env_name: str, spec, seed: int = 0):
  """One real replay sample, in the learner's iterator format.

  The actors' adder inserts random-action transitions into a local Reverb
  tables (the program's, without their rate limiters); the learner's
  dataset iterator takes them from the queue.
  """
  config = builder.config
  tables = unlimited_tables(builder, spec)
  server = reverb.Server(tables)
  try:
    client = reverb.Client(f'localhost:{server.port}')
    adder = builder.make_adder(client)
    environment = envs.make_environment(env_name, seed)
    rng = np.random.default_rng(seed)
    timestep = environment.reset()
    adder.add_first(timestep)
    for _ in range(learning.replay_queue_size(config)):
      action = rng.uniform(spec.actions.minimum, spec.actions.maximum,
                           spec.actions.shape).astype(np.float32)
      timestep = environment.step(action)
      adder.add(action, timestep)
      if timestep.last():
        timestep = environment.reset()
        adder.add_first(timestep)
    adder.reset()
    return next(builder.make_dataset_iterator(client))
  finally:
    server.stop()


def time_steps(learner, seconds: float) -> float:
  learner.step()  # Compilation, not timed.
  start, before = time.perf_counter(), learner.steps
  while time.perf_counter() - start < seconds:
    learner.step()
  return (learner.steps - before) / (time.perf_counter() - start)


def learner_offline_rate(config, dataset_fn, spec, seconds: float) -> float:
  """Updates/s of the learner alone in its offline phase (the baseline)."""
  networks = networks_lib.make_networks(spec, config)
  endless = dataclasses.replace(config, offline_steps=LEARNER_ONLY_OFFLINE_STEPS)
  offline = IQLBuilder(endless, dataset_fn).make_learner(
      jax.random.PRNGKey(0), networks, None)
  rate = time_steps(offline, seconds)
  log(f'learner-only offline: {rate:.1f} updates/s '
      f'({config.offline_steps_per_call} per call), load {load_average()}')
  return rate


def learner_only(config, dataset_fn, env_name: str, spec, seconds: float):
  """Updates/s of the learner alone: offline phase, online update compute."""
  networks = networks_lib.make_networks(spec, config)
  key = jax.random.PRNGKey(0)
  offline_rate = learner_offline_rate(config, dataset_fn, spec, seconds)
  # The online buffer at a fixed size (full: FIFO), so it never regrows.
  builder = IQLBuilder(dataclasses.replace(
      config, offline_steps=0, max_replay_size=config.online_steps),
                       dataset_fn)
  sample = replay_sample(builder, env_name, spec)
  online = builder.make_learner(key, networks, itertools.repeat(sample))
  online_rate = time_steps(online, seconds)
  log(f'learner-only online update (the same {len(sample)} new transitions '
      f'taken each call, one update each): {online_rate:.1f} '
      f'updates/s, load {load_average()}')
  return offline_rate, online_rate


# --- actors-only --------------------------------------------------------------

class PolicySource:
  """Stands in for the learner: initial policy parameters, offline phase done."""

  def __init__(self, config, spec, seed: int):
    networks = networks_lib.make_networks(spec, config)
    self._policy = jax.device_get(networks.init(jax.random.PRNGKey(seed))[0])
    self._steps = np.int32(config.offline_steps)

  def get_variables(self, names):
    values = {'policy': self._policy, 'learner_steps': self._steps}
    return [values[name] for name in names]


def unlimited_tables(builder, spec):
  """The program's replay tables without their rate limiters."""
  return [table.replace(rate_limiter=reverb.rate_limiters.MinSize(1))
          for table in builder.make_replay_tables(spec)]


def actors_only(config, dataset_fn, spec, run, steps: int):
  """Env steps/s of `run.num_actors` actors inserting into Reverb, no learner."""
  config = dataclasses.replace(config, online_steps=steps)
  builder = IQLBuilder(config, dataset_fn)
  program = lp.Program(name='bench_actors')
  with program.group('replay'):
    replay = program.add_node(lp.ReverbNode(
        lambda: unlimited_tables(builder, spec)))
  with program.group('counter'):
    counter = program.add_node(lp.CourierNode(
        program_lib.StepBudgetCounter, steps))
  with program.group('params'):
    params = program.add_node(lp.CourierNode(PolicySource, config, spec,
                                             run.seed))
  keys = jax.random.split(jax.random.PRNGKey(run.seed), run.num_actors)
  with program.group('actor'):
    for actor_id in range(run.num_actors):
      program.add_node(lp.CourierNode(
          program_lib.ActorNode, builder, run, actor_id, keys[actor_id],
          replay, params, counter))
  output = NodeOutput(os.path.join(run.workdir, 'nodes.log'))
  nodes = launch(program, output)
  monitor = Monitor(counter, nodes)
  actor_nodes = [n for name, n in nodes.items() if name.startswith('actor')]
  try:
    wait_while(lambda: any(n.alive() for n in actor_nodes), monitor,
               f'actors-only x{run.num_actors}')
  finally:
    monitor.stop()
    stop_nodes(nodes)
  # Each actor's own account (first action to last): the run is too short
  # for the counter's 50-step claims to give a steady window.
  summaries = []
  for path in glob.glob(os.path.join(run.workdir, 'logs',
                                     'actor_*_summary.json')):
    with open(path) as f:
      summaries.append(json.load(f))
  seconds = max(s['env_steps'] / s['env_steps_per_s'] for s in summaries)
  cpu = monitor.samples[-1][3] if monitor.samples else {}
  return {'env_steps_per_s': round(sum(s['env_steps'] for s in summaries) /
                                   seconds, 1),
          'cpu_seconds': {name: round(t, 2) for name, t in cpu.items()}}


def stop_nodes(nodes):
  supervisor.Supervisor(
      nodes, finished=lambda: True, release_actor=lambda i: 0,
      checkpoint=lambda: 0, error_file=lambda n: None).stop_all()


# --- online -------------------------------------------------------------------

def online(config, dataset_fn, run, warmup_frac: float):
  """The real program at 1:1: updates/s and env steps/s in a steady window."""
  program = program_lib.make_program(config, dataset_fn, run)
  output = NodeOutput(os.path.join(run.workdir, 'nodes.log'))
  nodes = launch(program, output)
  handles = program.iql_handles
  summary_path = os.path.join(run.workdir, program_lib.SUMMARY_FILE)
  monitor = Monitor(handles['counter'], nodes)
  watch = supervisor.Supervisor(
      nodes, finished=lambda: os.path.exists(summary_path),
      release_actor=lambda i: supervisor.courier_client(
          handles['counter']).release(i),
      checkpoint=lambda: 0,
      error_file=lambda node: program_lib.node_error(run.workdir, node))
  result = {}
  runner = threading.Thread(
      target=lambda: result.setdefault('code', watch.run()), daemon=True)
  runner.start()
  try:
    wait_while(runner.is_alive, monitor, f'online x{run.num_actors}')
  finally:
    monitor.stop()
    stop_nodes(nodes)
  if result.get('code') != 0:
    raise RuntimeError(f'the online run failed: {watch.message} '
                       f'(node output: {run.workdir}/nodes.log)')
  with open(summary_path) as f:
    summary = json.load(f)
  first, last = window(monitor.samples, config.online_steps, warmup_frac)
  elapsed = last[0] - first[0]
  return {
      'updates_per_s': round((last[2] - first[2]) / elapsed, 1),
      'env_steps_per_s': round((last[1] - first[1]) / elapsed, 1),
      'update_to_env_step_ratio': round(summary['update_to_env_step_ratio'],
                                        4),
      'first_online_update_s': output.first_online_s,
      'cpu_cores': cores_used(first, last),
  }


# --- main ---------------------------------------------------------------------

def parse_counts(text: str):
  counts = [int(n) for n in text.split(',') if n.strip()]
  if not counts or min(counts) <= 0:
    raise argparse.ArgumentTypeError(f'positive actor counts, got {text!r}')
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--env', default='pen-binary-v0')
  parser.add_argument('--dataset', default=None,
                      help='default: the embedded stand-in for --env')
  parser.add_argument('--batch_size', type=int, default=None,
                      help="default: the env's preset (256)")
  parser.add_argument('--rate_limit_tolerance_steps', type=int, default=None,
                      help='how far the actors may run ahead, in updates (config default)')
  parser.add_argument('--actors', type=parse_counts,
                      default=parse_counts(DEFAULT_ACTORS))
  parser.add_argument('--online_steps', type=int, default=10_000,
                      help='env steps of each online run (all actors)')
  parser.add_argument('--actor_steps', type=int, default=4_000,
                      help='env steps per actor of each actors-only run')
  parser.add_argument('--offline_steps', type=int, default=200,
                      help='offline updates before each online run')
  parser.add_argument('--learner_seconds', type=float, default=20.0,
                      help='timed seconds of each learner-only variant')
  parser.add_argument('--warmup_frac', type=float, default=0.2,
                      help='share of env steps left out at each end')
  parser.add_argument('--actor_niceness', type=int, default=10,
                      help='as launch/run_finetune.py (0: actors and '
                      'evaluator at the learner\'s priority)')
  parser.add_argument('--actor_idle_scheduling',
                      action=argparse.BooleanOptionalAction, default=True,
                      help='as launch/run_finetune.py (SCHED_IDLE actors and '
                      'evaluator)')
  parser.add_argument('--repeats', type=int, default=3,
                      help='online runs per actor count (interleaved); the '
                      'summary gives their mean and standard error')
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--skip_actors_only', action='store_true')
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error(f'--repeats must be >= 1, got {args.repeats}')

  root = args.workdir or tempfile.mkdtemp(prefix='bench_system_')
  environment = envs.make_environment(args.env, seed=0)
  spec = specs.make_environment_spec(environment)
  dataset_fn = run_setup.make_offline_dataset_fn(
      args.env, args.dataset, spec.observations.shape[0],
      spec.actions.shape[0])
  config = run_setup.make_config(
      args.env, dataset=args.dataset, offline_steps=args.offline_steps,
      online_steps=args.online_steps, batch_size=args.batch_size,
      rate_limit_tolerance_steps=args.rate_limit_tolerance_steps)
  load_start = load_average()
  log(f'{args.env}, batch {config.batch_size}, '
      f'replay queue {learning.replay_queue_size(config)} transitions, '
      f'actor niceness {args.actor_niceness}, idle scheduling '
      f'{args.actor_idle_scheduling}, workdir {root}, load {load_start}')

  offline_rate, online_compute = learner_only(
      config, dataset_fn, args.env, spec, args.learner_seconds)

  def run_config(kind, num_actors, repeat=0):
    workdir = os.path.join(root, f'{kind}-{num_actors}'
                           + (f'-{repeat}' if repeat else ''))
    os.makedirs(workdir, exist_ok=True)
    return program_lib.RunConfig(
        env_name=args.env, workdir=workdir, num_actors=num_actors,
        eval_every=10**9, eval_episodes=1, final_eval_episodes=1,
        checkpoint_every_s=10**6,
        log_every_s=5.0, actor_niceness=args.actor_niceness,
        actor_idle_scheduling=args.actor_idle_scheduling, supervised=True)

  actors, baselines = {}, [offline_rate]
  runs = {n: [] for n in args.actors}
  if not args.skip_actors_only:
    for n in args.actors:
      actors[n] = actors_only(config, dataset_fn, spec, run_config('actors', n),
                              n * args.actor_steps)
      log(f'actors-only x{n}: {actors[n]["env_steps_per_s"]:.1f} env steps/s '
          f'(CPU seconds, start-up included: {actors[n]["cpu_seconds"]}), '
          f'load {load_average()}')
  for repeat, n in itertools.product(range(args.repeats), args.actors):
    run = online(config, dataset_fn, run_config('online', n, repeat),
                 args.warmup_frac)
    # The machine's speed drifts (shared host): the baseline of each online
    # run is the mean of the learner-only rates measured just before and
    # just after it.
    baselines.append(learner_offline_rate(config, dataset_fn, spec,
                                          args.learner_seconds))
    run['learner_only_before_after'] = [round(x, 1) for x in baselines[-2:]]
    run['fraction_of_learner_only'] = round(
        run['updates_per_s'] / np.mean(baselines[-2:]), 3)
    runs[n].append(run)
    log(f'online x{n} (run {repeat + 1}/{args.repeats}): '
        f'{run["updates_per_s"]:.1f} updates/s = '
        f'{100 * run["fraction_of_learner_only"]:.0f}% of learner-only, '
        f'{run["env_steps_per_s"]:.1f} env steps/s, ratio '
        f'{run["update_to_env_step_ratio"]}, first online update '
        f'{run["first_online_update_s"]}s, load {load_average()}')
    log(f'  cores used: {run["cpu_cores"]}')

  print(f'learner-only: {offline_rate:.1f} updates/s offline (first), '
        f'{online_compute:.1f} online update compute')
  summary = {}
  for n in args.actors:
    fractions = np.array([r['fraction_of_learner_only'] for r in runs[n]])
    se = (fractions.std(ddof=1) / np.sqrt(len(fractions))
          if len(fractions) > 1 else float('nan'))
    summary[n] = {'fraction_mean': round(float(fractions.mean()), 3),
                  'fraction_se': round(float(se), 3),
                  'fractions': fractions.tolist(), 'runs': runs[n]}
    actor_text = (f'actors-only {actors[n]["env_steps_per_s"]:7.1f} env/s, '
                  if n in actors else '')
    for r in runs[n]:
      print(f'{n} actor(s): {actor_text}online {r["updates_per_s"]:6.1f} '
            f'updates/s = {100 * r["fraction_of_learner_only"]:5.1f}% of '
            f'learner-only {r["learner_only_before_after"]} (ratio '
            f'{r["update_to_env_step_ratio"]}, first online update '
            f'{r["first_online_update_s"]}s)')
    print(f'{n} actor(s): mean {100 * fractions.mean():5.1f}% '
          f'+- {100 * se:.1f} (standard error, {len(fractions)} runs)')
  print(f'load average: start {load_start}, end {load_average()}')
  print(json.dumps({
      'env': args.env, 'batch_size': config.batch_size,
      'replay_queue_size': learning.replay_queue_size(config),
      'online_steps': args.online_steps, 'actor_niceness': args.actor_niceness,
      'actor_idle_scheduling': args.actor_idle_scheduling,
      'repeats': args.repeats,
      'learner_only_updates_per_s': [round(x, 1) for x in baselines],
      'learner_only_online_update_per_s': round(online_compute, 1),
      'actors_only_env_steps_per_s': {
          str(n): a['env_steps_per_s'] for n, a in actors.items()},
      'online': {str(n): s for n, s in summary.items()},
      'load_average_start': load_start, 'load_average_end': load_average(),
  }))


if __name__ == '__main__':
  main()
