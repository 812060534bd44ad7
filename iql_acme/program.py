"""The Launchpad program: replay, counter, learner, N actors and an evaluator.

The evaluator doubles as the run's coordinator: it evaluates every
`eval_every` learner steps, at the end of the offline phase and at the end of
the run; once the actors have used up `online_steps` environment steps and the
learner has caught up, it checkpoints the learner, writes `summary.json` and
stops the program, so every process exits and the launcher returns.
"""

import dataclasses
import functools
import json
import os
import threading
import time
from typing import Optional

from absl import logging
from acme import specs
from acme.jax import savers
from acme.utils import counting
from acme.utils import signals
import jax
import launchpad as lp
import numpy as np
import reverb

from iql_acme import envs
from iql_acme import evaluation
from iql_acme import logs
from iql_acme import networks as networks_lib
from iql_acme.builder import IQLBuilder, OfflineDatasetFn
from iql_acme.config import IQLConfig

# Coordinator / bookkeeping periods (seconds).
COORDINATOR_POLL_S = 0.2
ACTOR_COUNTER_SYNC_S = 1.0  # How often actors report their steps.
LEARNER_CATCH_UP_TIMEOUT_S = 10.0
SUMMARY_FILE = 'summary.json'
FAILURE_FILE = 'FAILED'
COUNTS_FILE = 'counts.json'


@dataclasses.dataclass
class RunConfig:
  """What a run does besides the IQL hyperparameters."""
  env_name: str
  workdir: str
  num_actors: int = 2
  seed: int = 0
  eval_every: int = 5_000          # learner steps between evaluations
  eval_episodes: int = 10
  checkpoint_every_s: float = 300.0
  log_every_s: float = 10.0


def stop_program_on_failure(workdir: str, node: str, body):
  """Runs a node's loop; a failure stops the whole program and is recorded.

  Launchpad's local launchers leave the other nodes running when one fails;
  an IQL run without its learner, actors or coordinator can never finish.
  The launcher turns the record into its exit code.
  """
  try:
    return body()
  except Exception as e:  # pylint: disable=broad-except
    logging.exception('%s failed; stopping the program', node)
    with open(os.path.join(workdir, FAILURE_FILE), 'a') as f:
      f.write(f'{node}: {type(e).__name__}: {e}\n')
    lp.stop()
    raise


def run_outcome(workdir: str) -> Optional[str]:
  """None when the run finished; else what went wrong (for the launcher)."""
  failure = os.path.join(workdir, FAILURE_FILE)
  if os.path.exists(failure):
    with open(failure) as f:
      return f.read().strip()
  if not os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
    return f'the run ended without writing {SUMMARY_FILE}'
  return None


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def load_counts(workdir: str) -> dict:
  path = os.path.join(checkpoint_dir(workdir), COUNTS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def make_counter(workdir: str) -> counting.Counter:
  """The central counter, resumed from the last checkpoint's counts."""
  counter = counting.Counter()
  saved = load_counts(workdir)
  if saved:
    counter.increment(**saved)
  return counter


def actor_step_budgets(online_steps: int, num_actors: int,
                       already_done: int = 0):
  """Splits the remaining environment steps as evenly as possible."""
  remaining = max(online_steps - already_done, 0)
  base, extra = divmod(remaining, num_actors)
  return [base + (1 if i < extra else 0) for i in range(num_actors)]


class LearnerNode:
  """Runs IQL updates; serves parameters; checkpoints to the workdir."""

  def __init__(self, builder: IQLBuilder, run: RunConfig,
               environment_spec: specs.EnvironmentSpec, random_key,
               replay: reverb.Client, counter: counting.Counter):
    self._run, self._config = run, builder.config
    self._counter = counter
    networks = networks_lib.make_networks(environment_spec, builder.config)
    self._learner = builder.make_learner(
        random_key, networks, builder.make_dataset_iterator(replay), replay,
        counting.Counter(counter, 'learner'))
    self._checkpoint_path = os.path.join(checkpoint_dir(run.workdir), 'learner')
    if os.path.exists(os.path.join(self._checkpoint_path, 'array_nest')):
      self._learner.restore(savers.restore_from_path(self._checkpoint_path))
      logging.info('resumed learner from %s at step %d', self._checkpoint_path,
                   self._learner.steps)
    self._offline_policy = (None if self._learner.in_offline_phase else
                            self._learner.get_variables(['policy'])[0])
    self._stop = threading.Event()
    self._lock = threading.Lock()

  def get_variables(self, names):
    out = []
    for name in names:
      if name == 'offline_policy':  # Policy at the end of the offline phase.
        out.append(self._offline_policy)
      else:
        out.extend(self._learner.get_variables([name]))
    return out

  def save_checkpoint(self) -> int:
    with self._lock:
      state = self._learner.save()
      savers.save_to_path(self._checkpoint_path, state)
      counts = {k: v for k, v in self._counter.get_counts().items()
                if k.endswith('_steps')}
      with open(os.path.join(checkpoint_dir(self._run.workdir), COUNTS_FILE),
                'w') as f:
        json.dump(counts, f)
    return int(state.steps)

  def finish(self) -> int:
    """Stops updating, writes the final checkpoint; returns learner steps."""
    self._stop.set()
    return self.save_checkpoint()

  def run(self):
    # Like Acme's runners: a program stop raises SystemExit in this thread.
    with signals.runtime_terminator():
      stop_program_on_failure(self._run.workdir, 'learner', self._train)
    lp.wait_for_stop()  # Keep serving variables until the program stops.

  def _train(self):
    last_checkpoint = time.time()
    while not self._stop.is_set():
      was_offline = self._learner.in_offline_phase
      self._learner.step()
      if was_offline and not self._learner.in_offline_phase:
        self._offline_policy = self._learner.get_variables(['policy'])[0]
        logging.info('offline phase done after %d updates; actors may act now',
                     self._learner.steps)
      if time.time() - last_checkpoint > self._run.checkpoint_every_s:
        self.save_checkpoint()
        last_checkpoint = time.time()


class ActorNode:
  """One actor: steps its environment for its share of the online budget."""

  def __init__(self, builder: IQLBuilder, run: RunConfig, actor_id: int,
               num_steps: int, random_key, replay: reverb.Client,
               variable_source, counter: counting.Counter):
    self._run, self._id, self._num_steps = run, actor_id, num_steps
    self._counter = counter
    self._offline_steps = builder.config.offline_steps
    self._environment = envs.make_environment(
        run.env_name, seed=run.seed + 1_000 * (actor_id + 1))
    spec = specs.make_environment_spec(self._environment)
    networks = networks_lib.make_networks(spec, builder.config)
    self._adder = builder.make_adder(replay)
    self._actor = builder.make_actor(
        random_key, networks_lib.make_behaviour_policy(networks, builder.config),
        self._adder, variable_source)
    self._logger = logs.make_logger(run.workdir, f'actor_{actor_id}',
                                    run.log_every_s, steps_key='actor_steps')

  def run(self):
    stop_program_on_failure(self._run.workdir, f'actor_{self._id}',
                            self._act)

  def _act(self):
    steps, episodes, unreported, returns = 0, 0, 0, []
    start = last_log = last_sync = None
    while steps < self._num_steps:
      timestep = self._environment.reset()
      self._actor.observe_first(timestep)  # Blocks during the offline phase.
      start = start or time.time()
      episode_return = 0.0
      while not timestep.last() and steps < self._num_steps:
        action = self._actor.select_action(timestep.observation)
        timestep = self._environment.step(action)
        self._actor.observe(action, timestep)
        self._actor.update()
        episode_return += float(timestep.reward)
        steps, unreported = steps + 1, unreported + 1
        now = time.time()
        if now - (last_sync or start) >= ACTOR_COUNTER_SYNC_S:
          counts = self._counter.increment(actor_steps=unreported)
          unreported, last_sync = 0, now
          if now - (last_log or start) >= self._run.log_every_s:
            self._log(steps, episodes, returns, counts, now - start)
            last_log = now
      episodes += 1
      returns.append(episode_return)
    self._adder.reset()  # Flushes the last transition to Reverb.
    self._counter.increment(actor_steps=unreported, actor_episodes=episodes)
    summary = {
        'actor_id': self._id, 'env_steps': steps, 'episodes': episodes,
        'learner_steps_at_first_action':
            self._actor.learner_steps_at_first_action,
        'env_steps_per_s': steps / max(time.time() - (start or time.time()),
                                       1e-9)}
    with open(os.path.join(self._run.workdir, 'logs',
                           f'actor_{self._id}_summary.json'), 'w') as f:
      json.dump(summary, f)

  def _log(self, steps, episodes, returns, counts, elapsed):
    online_updates = max(counts.get('learner_steps', 0) - self._offline_steps,
                         0)
    self._logger.write({
        'actor_id': self._id, 'actor_steps': steps, 'episodes': episodes,
        'mean_return_last10': float(np.mean(returns[-10:])) if returns else 0.,
        'env_steps_per_s': steps / max(elapsed, 1e-9),
        'total_actor_steps': counts.get('actor_steps', 0),
        'update_to_env_step_ratio': (
            online_updates / max(counts.get('actor_steps', 0), 1))})


class EvaluatorNode:
  """Evaluates the deterministic policy; coordinates the end of the run."""

  def __init__(self, builder: IQLBuilder, run: RunConfig, random_key,
               learner, counter: counting.Counter, replay: reverb.Client,
               program_stopper=None):
    self._run, self._config = run, builder.config
    self._learner, self._counter, self._replay = learner, counter, replay
    self._stop_program = program_stopper or lp.stop
    self._environment = envs.make_environment(run.env_name,
                                              seed=run.seed + 999_983)
    spec = specs.make_environment_spec(self._environment)
    policy = networks_lib.make_evaluation_policy(
        networks_lib.make_networks(spec, builder.config))
    self._policy = jax.jit(policy, backend='cpu')
    self._key = random_key
    self._csv = evaluation.CsvWriter(
        os.path.join(run.workdir, 'logs', 'evaluator.csv'))
    self._tb = logs.make_logger(run.workdir, 'evaluator', 0.0, csv=False,
                                tensorboard=True, steps_key='learner_steps')
    self._start = time.time()

  def _evaluate(self, params, learner_steps, actor_steps, phase):
    def select_action(observation):
      return np.asarray(self._policy(params, self._key, observation[None])[0])
    result = evaluation.evaluate(self._environment, self._run.env_name,
                                 select_action, self._run.eval_episodes)
    row = {'learner_steps': learner_steps, 'actor_steps': actor_steps,
           'phase': phase, 'wall_time_s': round(time.time() - self._start, 2),
           **result}
    self._csv.write(row)
    self._tb.write({k: v for k, v in row.items()
                    if isinstance(v, (int, float)) and v is not None})
    logging.info('evaluation: %s', row)
    return row

  def _learner_steps(self) -> int:
    return int(np.asarray(self._learner.get_variables(['learner_steps'])[0]))

  def _replay_size(self) -> int:
    info = self._replay.server_info()
    return int(info[self._config.replay_table_name].current_size)

  def run(self):
    stop_program_on_failure(self._run.workdir, 'evaluator', self._coordinate)

  def _coordinate(self):
    config, run = self._config, self._run
    offline_steps, online_steps = config.offline_steps, config.online_steps
    learner_steps = self._learner_steps()
    next_eval = (learner_steps // run.eval_every + 1) * run.eval_every
    offline_end_done = learner_steps > offline_steps  # Resumed past it.
    last_progress = time.time()
    while True:
      learner_steps = self._learner_steps()
      actor_steps = int(self._counter.get_counts().get('actor_steps', 0))
      if not offline_end_done and learner_steps >= offline_steps:
        # The learner stores the snapshot right after its last offline
        # update; until then this is None and we ask again next poll.
        params = self._learner.get_variables(['offline_policy'])[0]
        if params is not None:
          self._evaluate(params, offline_steps, 0, 'offline_end')
          offline_end_done = True
          next_eval = max(next_eval, (offline_steps // run.eval_every + 1) *
                          run.eval_every)
      elif learner_steps >= next_eval:
        params = self._learner.get_variables(['policy'])[0]
        phase = 'offline' if learner_steps < offline_steps else 'online'
        self._evaluate(params, learner_steps, actor_steps, phase)
        next_eval = (learner_steps // run.eval_every + 1) * run.eval_every
      if offline_end_done and actor_steps >= online_steps:
        break
      if time.time() - last_progress >= run.log_every_s:
        self._log_progress(learner_steps, actor_steps)
        last_progress = time.time()
      time.sleep(COORDINATOR_POLL_S)
    self._finish(actor_steps)

  def _log_progress(self, learner_steps, actor_steps):
    config = self._config
    elapsed = time.time() - self._start
    online_updates = max(learner_steps - config.offline_steps, 0)
    if learner_steps < config.offline_steps:
      rate = learner_steps / elapsed
      eta = (config.offline_steps - learner_steps) / max(rate, 1e-9)
      logging.info('offline: %d/%d updates (%.0f/s, offline ETA %.0fs)',
                   learner_steps, config.offline_steps, rate, eta)
    else:
      logging.info('online: %d/%d env steps, %d updates, ratio %.3f, '
                   'replay %d', actor_steps, config.online_steps,
                   online_updates, online_updates / max(actor_steps, 1),
                   self._replay_size())

  def _finish(self, actor_steps):
    config = self._config
    # Let the learner use the updates the last inserts paid for.
    target = config.offline_steps + config.updates_per_env_step * actor_steps
    deadline, last = time.time() + LEARNER_CATCH_UP_TIMEOUT_S, -1
    while time.time() < deadline:
      steps = self._learner_steps()
      if steps >= target:
        break
      if steps != last:
        deadline, last = time.time() + LEARNER_CATCH_UP_TIMEOUT_S, steps
      time.sleep(COORDINATOR_POLL_S)
    learner_steps = self._learner.finish()
    params = self._learner.get_variables(['policy'])[0]
    final = self._evaluate(params, learner_steps, actor_steps, 'final')
    online_updates = max(learner_steps - config.offline_steps, 0)
    summary = {
        'env_name': self._run.env_name,
        'offline_steps': config.offline_steps,
        'online_steps': config.online_steps,
        'learner_steps': learner_steps,
        'online_updates': online_updates,
        'actor_steps': actor_steps,
        'update_to_env_step_ratio': online_updates / max(actor_steps, 1),
        'replay_size': self._replay_size(),
        'final_eval': final,
        'wall_time_s': time.time() - self._start,
    }
    with open(os.path.join(self._run.workdir, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2)
    logging.info('run finished: %s', summary)
    self._stop_program()


class _WithDefaults:
  """Gives every row the same keys (CSV headers come from the first row)."""

  def __init__(self, logger, defaults):
    self._logger, self._defaults = logger, defaults

  def write(self, values):
    self._logger.write({**self._defaults, **values})

  def close(self):
    self._logger.close()


def make_learner_logger(run: RunConfig):
  return _WithDefaults(
      logs.make_logger(run.workdir, 'learner', run.log_every_s,
                       tensorboard=True, steps_key='learner_steps'),
      {'actor_steps': 0})


def make_program(config: IQLConfig, offline_dataset_fn: OfflineDatasetFn,
                 run: RunConfig, name: str = 'iql_finetune') -> lp.Program:
  """Builds the Launchpad program for an offline-to-online IQL run."""
  for stale in (SUMMARY_FILE, FAILURE_FILE):  # From an earlier (resumed) run.
    if os.path.exists(os.path.join(run.workdir, stale)):
      os.remove(os.path.join(run.workdir, stale))
  builder = IQLBuilder(config, offline_dataset_fn,
                       logger_fn=functools.partial(make_learner_logger, run))
  os.makedirs(os.path.join(run.workdir, 'logs'), exist_ok=True)
  environment_spec = specs.make_environment_spec(
      envs.make_environment(run.env_name, seed=run.seed))
  done_steps = load_counts(run.workdir).get('actor_steps', 0)
  budgets = actor_step_budgets(builder.config.online_steps, run.num_actors,
                               done_steps)
  key = jax.random.PRNGKey(run.seed)
  learner_key, evaluator_key, *actor_keys = jax.random.split(
      key, 2 + run.num_actors)

  program = lp.Program(name=name)
  with program.group('replay'):
    replay = program.add_node(lp.ReverbNode(
        lambda: builder.make_replay_tables(environment_spec)))
  with program.group('counter'):
    counter = program.add_node(lp.CourierNode(make_counter, run.workdir))
  with program.group('learner'):
    learner = program.add_node(lp.CourierNode(
        LearnerNode, builder, run, environment_spec, learner_key, replay,
        counter))
  with program.group('actor'):
    for actor_id, (actor_key, budget) in enumerate(zip(actor_keys, budgets)):
      program.add_node(lp.CourierNode(
          ActorNode, builder, run, actor_id, budget, actor_key, replay,
          learner, counter))
  with program.group('evaluator'):
    program.add_node(lp.CourierNode(
        EvaluatorNode, builder, run, evaluator_key, learner, counter, replay))
  return program
