"""The Launchpad program: replay, counter, learner, N actors and an evaluator.

The evaluator doubles as the run's coordinator: it evaluates every
`eval_every` learner steps, at the end of the offline phase and at the end of
the run; once the actors have used up `online_steps` environment steps and the
learner has caught up, it checkpoints the learner, writes `summary.json` and
ends (under the launcher's supervisor, `iql_acme/supervisor.py`, which then
stops the program) or stops the program itself (other launchers).

Actors do not own fixed shares of the online budget: they claim steps in
chunks from the counter, so when one dies its unfinished claim goes back to
the budget and the others take it. A checkpoint (learner state, counts, and
the Reverb replay through Reverb's own checkpointer) is written every
`checkpoint_every_s` and on request; `checkpoints/state.json` names the
consistent set, and on resume the steps done are the transitions the learner
took plus those in its queue (see `make_counter`).
"""

import dataclasses
import functools
import glob
import json
import os
import shutil
import threading
import time
from typing import Optional, Tuple

from absl import logging
from acme import specs
from acme.jax import savers
from acme.utils import counting
from acme.utils import signals
import jax
import launchpad as lp
import numpy as np
import reverb

from iql_acme import actors
from iql_acme import envs
from iql_acme import evaluation
from iql_acme import logs
from iql_acme import networks as networks_lib
from iql_acme import training
from iql_acme.builder import IQLBuilder, OfflineDatasetFn, queue_table_name
from iql_acme.config import IQLConfig
from iql_acme.types import Transitions

# Coordinator / bookkeeping periods (seconds).
COORDINATOR_POLL_S = 0.2
LEARNER_CATCH_UP_TIMEOUT_S = 10.0
DEFAULT_CHECKPOINT_EVERY_S = 60.0
# Actors claim this many environment steps at a time from the shared budget
# (about 1.5 s of acting): small enough that the budget balances at the end
# and that a dead actor's unfinished claim is small.
ACTOR_CLAIM_STEPS = 50
ACTOR_CLAIM_RETRY_S = 0.5   # An actor with no claim asks again this often.
RESUME_REPLAY_WAIT_S = 120  # The counter waits this long for replay to load.
SUMMARY_FILE = 'summary.json'
FAILURE_FILE = 'FAILED'
STATE_FILE = 'state.json'    # Names the checkpoint: learner, replay, counts.
ROWS_TAKEN_KEY = 'online_rows_taken'  # In state.json: the learner's rows.
NOT_LEARNED_KEY = 'replay_rows_not_learned'  # A count: see make_counter.
LEGACY_LEARNER_DIR = 'learner'
REPLAY_CHECKPOINT_DIR = 'replay'
ONLINE_FILE = 'online_transitions.npz'  # In the learner's checkpoint folder.
# The offline-end evaluation (in logs/): its row and per-episode scores,
# kept for the final paired comparison, also across resumes.
OFFLINE_END_FILE = 'offline_end_eval.json'
GAIN_KEY = 'finetuning_gain'  # In summary.json: final - offline end, paired.


@dataclasses.dataclass
class RunConfig:
  """What a run does besides the IQL hyperparameters."""
  env_name: str
  workdir: str
  num_actors: int = 2
  seed: int = 0
  eval_every: int = 5_000          # learner steps between evaluations
  eval_episodes: int = evaluation.DEFAULT_EVAL_EPISODES
  # Episodes of the offline-end and final evaluations, which summary.json
  # compares (paired, on the same start states).
  final_eval_episodes: int = evaluation.FINAL_EVAL_EPISODES
  checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S
  log_every_s: float = 10.0
  # The actor and evaluator processes' CPU priority below the learner's,
  # the bottleneck of paced training, where they share CPUs: niceness added
  # (0: none) and, with `actor_idle_scheduling`, Linux's SCHED_IDLE policy
  # (they run only on CPU time the learner leaves idle, and their wake-ups
  # never preempt its XLA threads). Each node must own its process: in
  # `local_mt` (one process) the launcher passes 0 and False. Figures:
  # benchmarks/bench_system.py, README.
  actor_niceness: int = 0
  actor_idle_scheduling: bool = False
  # True when the launcher's supervisor watches the nodes: then a node that
  # ends (fails, or the evaluator finishes) leaves stopping to it.
  supervised: bool = False


def lower_priority(niceness: int, idle: bool = False):
  """Adds `niceness` to every thread of this process and, with `idle`, puts
  them under SCHED_IDLE (Linux priority is per thread; threads started later
  inherit it). Where SCHED_IDLE is missing, niceness alone applies."""
  if niceness <= 0 and not idle:
    return
  try:
    threads = [int(tid) for tid in os.listdir('/proc/self/task')]
  except OSError:  # No /proc: this thread, and the threads it starts.
    threads = [0]
  for tid in threads:
    try:
      if niceness > 0:
        os.setpriority(os.PRIO_PROCESS, tid,
                       os.getpriority(os.PRIO_PROCESS, tid) + niceness)
      if idle and hasattr(os, 'SCHED_IDLE'):
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (ProcessLookupError, PermissionError):
      pass  # The thread ended meanwhile.


def node_error_file(workdir: str, node: str) -> str:
  return os.path.join(workdir, 'logs', f'{node}.error')


def node_error(workdir: str, node: str) -> Optional[str]:
  """The exception a node recorded when it failed (this launch), if any."""
  path = node_error_file(workdir, node)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read().strip() or None


def stop_program_on_failure(workdir: str, node: str, body,
                            supervised: bool = False):
  """Runs a node's loop; a failure is recorded and ends the node.

  Under the supervisor the node's death is enough: it stops the program (or,
  for an actor, hands its steps to the others). Otherwise Launchpad's local
  launchers would leave the other nodes running, so the node stops the
  program itself and the launcher turns the record into its exit code.
  """
  try:
    return body()
  except Exception as e:  # pylint: disable=broad-except
    logging.exception('%s failed', node)
    with open(node_error_file(workdir, node), 'w') as f:
      f.write(f'{type(e).__name__}: {e}')
    if not supervised:
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


def replay_checkpoint_root(workdir: str) -> str:
  return os.path.join(checkpoint_dir(workdir), REPLAY_CHECKPOINT_DIR)


def load_state(workdir: str) -> dict:
  """The last complete checkpoint's record ({} before the first one)."""
  path = os.path.join(checkpoint_dir(workdir), STATE_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_last_checkpoint(workdir: str) -> Tuple[object, str]:
  """(TrainingState, folder) of the run's last learner checkpoint."""
  state = load_state(workdir)
  path = os.path.join(checkpoint_dir(workdir), state.get('learner', ''))
  if not state or not os.path.exists(os.path.join(path, 'array_nest')):
    raise ValueError(f'{workdir} holds no learner checkpoint '
                     f'({checkpoint_dir(workdir)}/{STATE_FILE}); pass the '
                     '--workdir of a run_finetune.py run')
  return savers.restore_from_path(path), path


def load_checkpoint_policy(workdir: str) -> Tuple[object, int]:
  """(policy parameters, learner step) of the run's last checkpoint."""
  training_state, _ = load_last_checkpoint(workdir)
  return training_state.policy_params, int(training_state.steps)


def result_line(summary: dict) -> Optional[str]:
  """The run's outcome in one line: offline-end and final scores, the gain."""
  final, gain = summary.get('final_eval'), summary.get(GAIN_KEY)
  if not final or final.get('normalized_score') is None:
    return None

  def score(e):
    return (f"{e['normalized_score']:.1f} +- {e['normalized_score_se']:.1f} "
            f"({e['episodes']} episodes)")

  what = ('success rate %' if final.get('success_rate') is not None
          else 'normalized score')
  offline_end = summary.get('offline_end_eval')
  if not (offline_end and gain):
    return f'{what}: final {score(final)}'
  return (f'{what}: offline end {score(offline_end)}, final {score(final)}; '
          f"fine-tuning gain {gain['mean']:+.1f} +- {gain['se']:.1f} "
          f"(paired over the same {gain['episodes']} start states)")


def load_counts(workdir: str) -> dict:
  return load_state(workdir).get('counts', {})


def _write_json_atomically(path: str, value):
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(path + '.tmp', path)  # Readers see the old or the new, whole.


def prune_checkpoints(workdir: str, state: dict):
  """Keeps only what `state` names (a crash may leave a newer partial one).

  Reverb loads the newest checkpoint under its root, so the root must hold
  exactly the one consistent with the learner's and the counts. The replay
  checkpoint is matched by its folder name, not by the absolute path Reverb
  recorded: a workdir that was moved or copied keeps its replay.
  """
  keep = {state.get('learner'), LEGACY_LEARNER_DIR if not state else None}
  keep_replay = os.path.basename(os.path.normpath(state.get('replay') or ''))
  root = checkpoint_dir(workdir)
  if os.path.isdir(root):
    for name in os.listdir(root):
      if name.startswith('learner') and name not in keep:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  replay_root = replay_checkpoint_root(workdir)
  if os.path.isdir(replay_root):
    for name in os.listdir(replay_root):
      if name != keep_replay:
        shutil.rmtree(os.path.join(replay_root, name), ignore_errors=True)


def replay_size(replay: reverb.Client, table: str,
                timeout_s: Optional[int] = None) -> int:
  return int(replay.server_info(timeout_s)[table].current_size)


def save_online_transitions(path: str, rows: Transitions, owed: float):
  """The learner's online data (and the updates owed) as one .npz."""
  with open(path, 'wb') as f:
    np.savez(f, owed_updates=owed, **rows._asdict())


def load_online_transitions(path: str) -> Tuple[Transitions, float]:
  with np.load(path) as data:
    return (Transitions(*[data[name] for name in Transitions._fields]),
            float(data['owed_updates']))


class StepBudgetCounter(counting.Counter):
  """Acme's central counter, plus the online step budget the actors share.

  `claim` reports an actor's finished steps and grants it up to `want` more;
  `release` (the supervisor, when an actor died) returns its unfinished
  grant to the budget.
  """

  def __init__(self, online_steps: int, counts: Optional[dict] = None):
    super().__init__()
    self._budget = online_steps
    self._claims = {}
    self._claim_lock = threading.Lock()
    counts = {k: v for k, v in (counts or {}).items() if v}
    if counts:
      self.increment(**counts)

  def claim(self, actor_id: int, done: int, want: int):
    """Returns (granted steps, whether the budget is used up, counts)."""
    with self._claim_lock:
      counts = (self.increment(actor_steps=done) if done else
                self.get_counts())
      self._claims[actor_id] = max(self._claims.get(actor_id, 0) - done, 0)
      done_total = counts.get('actor_steps', 0)
      free = self._budget - done_total - sum(self._claims.values())
      grant = int(min(want, max(free, 0)))
      self._claims[actor_id] += grant
      return grant, done_total >= self._budget, counts

  def release(self, actor_id: int) -> int:
    with self._claim_lock:
      return self._claims.pop(actor_id, 0)


def make_counter(workdir: str, online_steps: int, replay: reverb.Client,
                 table: str, queue_table: str) -> StepBudgetCounter:
  """The central counter, resumed from the last checkpoint.

  The environment steps done are the transitions the learner had taken at
  the checkpoint plus those in the checkpointed queue (restored by Reverb
  before it serves): each is learned from once, so the pacing stays 1:1.
  An actor's insert writes the replay table and the queue separately; when
  the queue is full, up to a few in-flight transitions per actor are in
  the replay table and not yet in the queue. Those never reach the learner,
  so they are not counted (actors redo that many steps) and are reported
  as `replay_rows_not_learned`.
  """
  state = load_state(workdir)
  counts = dict(state.get('counts', {}))
  if state.get('replay'):
    in_replay = replay_size(replay, table, RESUME_REPLAY_WAIT_S)
    if ROWS_TAKEN_KEY in state:
      done = state[ROWS_TAKEN_KEY] + replay_size(replay, queue_table)
      counts[NOT_LEARNED_KEY] = max(in_replay - done, 0)
      logging.info('resumed at %d env steps (%d taken by the learner, the '
                   'rest queued); %d replay rows never reached the queue',
                   done, state[ROWS_TAKEN_KEY], counts[NOT_LEARNED_KEY])
    else:  # A checkpoint from before ROWS_TAKEN_KEY was recorded.
      done = in_replay
    counts['actor_steps'] = done
  return StepBudgetCounter(online_steps, counts)


class LearnerNode:
  """Runs IQL updates; serves parameters; checkpoints to the workdir."""

  def __init__(self, builder: IQLBuilder, run: RunConfig,
               environment_spec: specs.EnvironmentSpec, random_key,
               replay: reverb.Client, counter: counting.Counter):
    self._run, self._config = run, builder.config
    self._counter = counter
    networks = networks_lib.make_networks(environment_spec, builder.config)
    self._replay = replay
    state = load_state(run.workdir)
    self._start = time.time() - state.get('wall_time_s', 0.0)
    self._learner = builder.make_learner(
        random_key, networks, builder.make_dataset_iterator(replay), replay,
        counting.Counter(counter, 'learner'))
    path = os.path.join(checkpoint_dir(run.workdir),
                        state.get('learner', LEGACY_LEARNER_DIR))
    if os.path.exists(os.path.join(path, 'array_nest')):
      self._learner.restore(savers.restore_from_path(path))
      if os.path.exists(os.path.join(path, ONLINE_FILE)):
        rows, owed = load_online_transitions(os.path.join(path, ONLINE_FILE))
        self._learner.restore_online_transitions(rows, owed,
                                                 state.get(ROWS_TAKEN_KEY))
      logging.info('resumed learner from %s at step %d', path,
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
    """Replay, learner state and counts, then `state.json` naming them.

    Until `state.json` is replaced the previous checkpoint stands whole; a
    node killed midway leaves extra files that the next launch removes.
    """
    # The learner held: no replay row taken and no update between the
    # replay's checkpoint (its queue holds the rows not yet taken) and the
    # learner's (its state and the rows it took).
    with self._lock, self._learner.hold():
      root = checkpoint_dir(self._run.workdir)
      os.makedirs(root, exist_ok=True)
      counts = self._counter.get_counts()
      replay_path = self._replay.checkpoint()
      state = self._learner.save()
      learner_dir = f'learner-{int(state.steps)}-{time.time_ns()}'
      savers.save_to_path(os.path.join(root, learner_dir), state)
      save_online_transitions(
          os.path.join(root, learner_dir, ONLINE_FILE),
          self._learner.online_transitions(), self._learner.owed_updates)
      # The learner may step between the two reads; its state is the truth.
      counts['learner_steps'] = int(state.steps)
      record = {'learner': learner_dir, 'replay': replay_path,
                'learner_steps': int(state.steps),
                ROWS_TAKEN_KEY: self._learner.rows_taken, 'counts': counts,
                'wall_time_s': time.time() - self._start}
      _write_json_atomically(os.path.join(root, STATE_FILE), record)
      prune_checkpoints(self._run.workdir, record)
    logging.info('checkpoint at learner step %d, %d env steps', state.steps,
                 counts.get('actor_steps', 0))
    return int(state.steps)

  def checkpoint(self) -> int:
    """For the launcher (a stop request): a checkpoint now."""
    return self.save_checkpoint()

  def finish(self) -> int:
    """Stops updating, writes the final checkpoint; returns learner steps."""
    self._stop.set()
    return self.save_checkpoint()

  def run(self):
    # Like Acme's runners: a program stop raises SystemExit in this thread.
    with signals.runtime_terminator():
      stop_program_on_failure(self._run.workdir, 'learner', self._train,
                              self._run.supervised)
    lp.wait_for_stop()  # Keep serving variables until the program stops.

  def _train(self):
    last_checkpoint = time.time()
    offline_end = None  # When the offline phase ended (this launch).
    while not self._stop.is_set():
      was_offline = self._learner.in_offline_phase
      self._learner.step()
      if was_offline and not self._learner.in_offline_phase:
        self._offline_policy = self._learner.get_variables(['policy'])[0]
        logging.info('offline phase done after %d updates; actors may act now',
                     self._learner.steps)
        offline_end = time.time()
      elif offline_end and self._learner.steps > self._config.offline_steps:
        # The boundary's pause: the actors' first transitions (they fetch
        # the new policy first) and the online update's compile, if the
        # background compile has not finished.
        logging.info('first online update %.1fs after the offline phase',
                     time.time() - offline_end)
        offline_end = None
      if time.time() - last_checkpoint > self._run.checkpoint_every_s:
        self.save_checkpoint()
        last_checkpoint = time.time()


class ActorNode:
  """One actor: steps its environment while the shared budget lasts."""

  def __init__(self, builder: IQLBuilder, run: RunConfig, actor_id: int,
               random_key, replay: reverb.Client, variable_source,
               counter: StepBudgetCounter):
    self._run, self._id = run, actor_id
    self._counter = counter
    self._granted = self._unreported = 0
    self._counts = {}
    self._offline_steps = builder.config.offline_steps
    self._environment = envs.make_environment(
        run.env_name, seed=run.seed + 1_000 * (actor_id + 1))
    spec = specs.make_environment_spec(self._environment)
    networks = networks_lib.make_networks(spec, builder.config)
    self._adder = builder.make_adder(replay)
    self._actor = actors.make_numpy_actor(builder.config, networks, random_key,
                                          variable_source, self._adder)
    self._logger = logs.make_logger(run.workdir, f'actor_{actor_id}',
                                    run.log_every_s, steps_key='actor_steps')

  def run(self):
    lower_priority(self._run.actor_niceness,
                   self._run.actor_idle_scheduling)
    stop_program_on_failure(self._run.workdir, f'actor_{self._id}',
                            self._act, self._run.supervised)

  def _may_step(self) -> bool:
    """True while this actor holds a claim on the budget; claims more.

    Reported steps are flushed to Reverb first, so the counter never counts
    a transition that is not in replay. With no grant and the budget not yet
    used up (another actor holds the rest) it waits: that actor may die.
    """
    while self._granted == 0:
      if self._unreported:
        self._adder.flush()
      self._granted, finished, self._counts = self._counter.claim(
          self._id, self._unreported, ACTOR_CLAIM_STEPS)
      self._unreported = 0
      if self._granted == 0:
        if finished:
          return False
        time.sleep(ACTOR_CLAIM_RETRY_S)
    return True

  def _act(self):
    steps, episodes, returns = 0, 0, []
    start = last_log = None
    while self._may_step():
      timestep = self._environment.reset()
      self._actor.observe_first(timestep)  # Blocks during the offline phase.
      start = start or time.time()
      episode_return = 0.0
      while not timestep.last() and self._may_step():
        action = self._actor.select_action(timestep.observation)
        timestep = self._environment.step(action)
        self._actor.observe(action, timestep)
        self._actor.update()
        episode_return += float(timestep.reward)
        steps, self._granted = steps + 1, self._granted - 1
        self._unreported += 1
        now = time.time()
        if now - (last_log or start) >= self._run.log_every_s:
          self._log(steps, episodes, returns, self._counts, now - start)
          last_log = now
      episodes += 1
      returns.append(episode_return)
    self._adder.reset()  # Ends the last episode in Reverb.
    self._counter.increment(actor_episodes=episodes)
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
    self._stop_program = program_stopper or (
        (lambda: None) if run.supervised else lp.stop)
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
    # Wall time continues across resumes.
    self._start = time.time() - load_state(run.workdir).get('wall_time_s', 0.0)
    self._online_start = None  # (time, env steps) when acting began here.

  def _evaluate(self, params, learner_steps, actor_steps, phase,
                num_episodes=None):
    def select_action(observation):
      return np.asarray(self._policy(params, self._key, observation[None])[0])
    result, episode_scores = evaluation.evaluate_with_scores(
        self._environment, self._run.env_name, select_action,
        num_episodes or self._run.eval_episodes)
    row = {'learner_steps': learner_steps, 'actor_steps': actor_steps,
           'phase': phase, 'wall_time_s': round(time.time() - self._start, 2),
           **result}
    self._csv.write(row)
    self._tb.write({k: v for k, v in row.items()
                    if isinstance(v, (int, float)) and v is not None})
    logging.info('evaluation: %s', row)
    return row, episode_scores

  def _offline_end_path(self) -> str:
    return os.path.join(self._run.workdir, 'logs', OFFLINE_END_FILE)

  def _learner_steps(self) -> int:
    return int(np.asarray(self._learner.get_variables(['learner_steps'])[0]))

  def _replay_size(self) -> int:
    info = self._replay.server_info()
    return int(info[self._config.replay_table_name].current_size)

  def run(self):
    lower_priority(self._run.actor_niceness,
                   self._run.actor_idle_scheduling)
    stop_program_on_failure(self._run.workdir, 'evaluator', self._coordinate,
                            self._run.supervised)

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
          row, scores = self._evaluate(params, offline_steps, 0,
                                       'offline_end', run.final_eval_episodes)
          _write_json_atomically(self._offline_end_path(),
                                 {'eval': row, 'episode_scores': scores})
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
      now = time.time()
      if self._online_start is None:
        self._online_start = (now, actor_steps)
      since, steps_then = self._online_start
      rate = (actor_steps - steps_then) / max(now - since, 1e-9)
      remaining = max(config.online_steps - actor_steps, 0)
      eta = f'{remaining / rate:.0f}s' if rate > 0 else '?'
      logging.info('online: %d/%d env steps (%.1f/s, ETA %s), %d updates, '
                   'ratio %.3f, replay %d', actor_steps, config.online_steps,
                   rate, eta, online_updates,
                   online_updates / max(actor_steps, 1), self._replay_size())

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
    final, final_scores = self._evaluate(params, learner_steps, actor_steps,
                                         'final',
                                         self._run.final_eval_episodes)
    offline_end, gain = None, None
    if os.path.exists(self._offline_end_path()):
      with open(self._offline_end_path()) as f:
        offline_end = json.load(f)
      gain = evaluation.paired_gain(final_scores,
                                    offline_end['episode_scores'])
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
        NOT_LEARNED_KEY: int(self._counter.get_counts().get(NOT_LEARNED_KEY,
                                                            0)),
        'offline_end_eval': offline_end and offline_end['eval'],
        'final_eval': final,
        GAIN_KEY: gain,
        'wall_time_s': time.time() - self._start,
        'config': dataclasses.asdict(config),
    }
    _write_json_atomically(os.path.join(self._run.workdir, SUMMARY_FILE),
                           summary)
    logging.info('run finished: %s', summary)
    outcome = result_line(summary)  # The launcher prints it after `done:`.
    if outcome:
      logging.info('%s', outcome)
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
  """Builds the Launchpad program for an offline-to-online IQL run.

  The nodes' handles are in `program.iql_handles` (for the supervisor).
  """
  for stale in (SUMMARY_FILE, FAILURE_FILE):  # From an earlier (resumed) run.
    if os.path.exists(os.path.join(run.workdir, stale)):
      os.remove(os.path.join(run.workdir, stale))
  for stale in glob.glob(node_error_file(run.workdir, '*')):
    os.remove(stale)
  prune_checkpoints(run.workdir, load_state(run.workdir))
  replay_root = replay_checkpoint_root(run.workdir)
  builder = IQLBuilder(config, offline_dataset_fn,
                       logger_fn=functools.partial(make_learner_logger, run))
  os.makedirs(os.path.join(run.workdir, 'logs'), exist_ok=True)
  environment_spec = specs.make_environment_spec(
      envs.make_environment(run.env_name, seed=run.seed))
  learner_key, evaluator_key, actor_keys = training.run_keys(run.seed,
                                                            run.num_actors)

  program = lp.Program(name=name)
  with program.group('replay'):
    # Reverb restores the newest checkpoint under its root: the one
    # state.json names (prune_checkpoints removed any other).
    replay = program.add_node(lp.ReverbNode(
        lambda: builder.make_replay_tables(environment_spec),
        checkpoint_ctor=lambda: reverb.checkpointers.DefaultCheckpointer(
            replay_root)))
  with program.group('counter'):
    counter = program.add_node(lp.CourierNode(
        make_counter, run.workdir, builder.config.online_steps, replay,
        builder.config.replay_table_name, queue_table_name(builder.config)))
  with program.group('learner'):
    learner = program.add_node(lp.CourierNode(
        LearnerNode, builder, run, environment_spec, learner_key, replay,
        counter))
  with program.group('actor'):
    for actor_id, actor_key in enumerate(actor_keys):
      program.add_node(lp.CourierNode(
          ActorNode, builder, run, actor_id, actor_key, replay, learner,
          counter))
  with program.group('evaluator'):
    evaluator = program.add_node(lp.CourierNode(
        EvaluatorNode, builder, run, evaluator_key, learner, counter, replay))
  program.iql_handles = {'replay': replay, 'counter': counter,
                         'learner': learner, 'evaluator': evaluator}
  return program
