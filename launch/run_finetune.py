"""Offline-to-online IQL: `python launch/run_finetune.py --env=pen-binary-v0 --lp_launch_type=local_mp`.

Offline IQL on the dataset, then online fine-tuning with Launchpad actors
feeding Reverb at one update per environment step, with an evaluator.
Outputs go to --workdir: logs/*.csv, tensorboard/, checkpoints/, summary.json.
A run resumes from the checkpoints in --workdir; rerunning a finished one
does nothing unless --online_steps grew. Under local_mp / local_mt the
launcher supervises the nodes (`iql_acme/supervisor.py`): a dead actor's
steps go to the others; any other node's death ends the run with exit 1;
Ctrl-C / SIGTERM checkpoint and exit 130 / 143. With
--lp_launch_type=vertex_ai the program goes to Google Cloud Vertex AI
(`iql_acme/multi_machine.py`): the command submits it and exits 0.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import launchpad as lp

from iql_acme import envs
from iql_acme import evaluation
from iql_acme import multi_machine
from iql_acme import placement
from iql_acme import program as program_lib
from iql_acme import run_setup
from iql_acme import supervisor

# Launchpad's own default is local_mt (threads); a process per node is what
# this command is for.
flags.FLAGS.set_default('lp_launch_type', 'local_mp')
SUPERVISED_LAUNCH_TYPES = ('local_mp', 'local_mt')
EXIT_USAGE = 2

_ENV = flags.DEFINE_string('env', 'pen-binary-v0', 'Environment name.')
_DATASET = flags.DEFINE_string(
    'dataset', None, 'Dataset path or D4RL name; default: the embedded '
    'stand-in for the env, else the D4RL dataset of that name.')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Output directory (default runs/ENV-seedS).')
_NUM_ACTORS = flags.DEFINE_integer('num_actors', 2, 'Number of actors.')
_OFFLINE_STEPS = flags.DEFINE_integer(
    'offline_steps', None, 'Offline updates (default: the domain preset).')
_ONLINE_STEPS = flags.DEFINE_integer(
    'online_steps', 100_000, 'Environment steps of fine-tuning, all actors '
    '(the default is about 10 min on 2 cores for pen-binary-v0).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 10_000,
                                   'Learner steps between evaluations.')
_EVAL_EPISODES = flags.DEFINE_integer(
    'eval_episodes', evaluation.DEFAULT_EVAL_EPISODES,
    'Episodes per evaluation, on fixed start states (the default keeps the '
    "success rate's standard error at or under "
    f'{100 * evaluation.MAX_SUCCESS_RATE_SE:.0f} points).')
_FINAL_EVAL_EPISODES = flags.DEFINE_integer(
    'final_eval_episodes', evaluation.FINAL_EVAL_EPISODES,
    'Episodes of the offline-end and final evaluations (same start states as '
    'the others, and more of them: a standard error at or under '
    f'{100 * evaluation.FINAL_MAX_SUCCESS_RATE_SE:.1f} points); summary.json '
    'gives their paired difference, the fine-tuning gain.')
_LOG_EVERY = flags.DEFINE_float('log_every', 10.0,
                                'Seconds between log lines and CSV rows.')
_CHECKPOINT_EVERY = flags.DEFINE_float(
    'checkpoint_every', program_lib.DEFAULT_CHECKPOINT_EVERY_S,
    'Seconds between checkpoints (learner, counts and replay); a stop '
    '(Ctrl-C, SIGTERM) also writes one.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Batch size (256).')
_UPDATES_PER_ENV_STEP = flags.DEFINE_float(
    'updates_per_env_step', None, 'Gradient updates per environment step (1).')
_ONLINE_FRACTION = flags.DEFINE_float(
    'online_fraction', None, 'Fixed online share of each batch; default: one '
    'uniform pool of offline and online data.')
_EXPLORATION_NOISE = flags.DEFINE_float(
    'exploration_noise', None, 'Std of Gaussian action noise (preset).')
_EXPECTILE = flags.DEFINE_float(
    'expectile', None, "IQL's expectile tau, in (0, 1) (default: the "
    "domain preset's, iql_acme/config.py).")
_TEMPERATURE = flags.DEFINE_float(
    'temperature', None, "IQL's inverse temperature beta of the advantage "
    "weights, >= 0; 0 is behavioural cloning (default: the domain preset's).")
_ACTOR_COSINE_DECAY = flags.DEFINE_boolean(
    'actor_cosine_decay', None, "Decay the actor's rate (cosine) over the "
    'offline phase (default: on); --noactor_cosine_decay keeps it constant, '
    "as the original IQL code's fine-tuning configs do.")
_ONLINE_ACTOR_LR = flags.DEFINE_float(
    'online_actor_learning_rate', None, "The actor's learning rate after the "
    'offline phase, >= 0 (default: the offline rate, 3e-4).')
_ACTOR_NICENESS = flags.DEFINE_integer(
    'actor_niceness', 10, 'Niceness added to actor and evaluator processes, '
    '0-19: on shared CPUs the learner gets them first (ignored by local_mt, '
    'where every node shares one process).')
_ACTOR_IDLE_SCHEDULING = flags.DEFINE_boolean(
    'actor_idle_scheduling', True, 'Run actor and evaluator processes under '
    "Linux's SCHED_IDLE policy: on shared CPUs they use only the time the "
    'learner leaves idle (ignored by local_mt).')
# --lp_launch_type=vertex_ai only (defaults: multi_machine.VertexConfig).
_VERTEX_DEFAULTS = multi_machine.VertexConfig()
_VERTEX_LEARNER_MACHINE_TYPE = flags.DEFINE_string(
    'vertex_learner_machine_type', None,
    f'Learner machine (default {multi_machine.DEFAULT_LEARNER_MACHINE_TYPE}; '
    'A100s get their A2 machine).')
_VERTEX_LEARNER_ACCELERATOR = flags.DEFINE_string(
    'vertex_learner_accelerator', _VERTEX_DEFAULTS.learner_accelerator,
    f'Learner GPU type (P4, T4, P100, V100, A100) or '
    f'{multi_machine.NO_ACCELERATOR}.')
_VERTEX_LEARNER_ACCELERATOR_COUNT = flags.DEFINE_integer(
    'vertex_learner_accelerator_count',
    _VERTEX_DEFAULTS.learner_accelerator_count, 'GPUs on the learner machine.')
_VERTEX_REPLAY_MACHINE_TYPE = flags.DEFINE_string(
    'vertex_replay_machine_type', _VERTEX_DEFAULTS.replay_machine_type,
    'Machine of the Reverb replay node.')
_VERTEX_ACTOR_MACHINE_TYPE = flags.DEFINE_string(
    'vertex_actor_machine_type', _VERTEX_DEFAULTS.actor_machine_type,
    'Machine of each actor (one actor per machine).')
_VERTEX_EVALUATOR_MACHINE_TYPE = flags.DEFINE_string(
    'vertex_evaluator_machine_type', _VERTEX_DEFAULTS.evaluator_machine_type,
    'Machine of the evaluator and of the counter.')


def _check_flags():
  if _ENV.value not in envs.KNOWN_ENVIRONMENTS:
    envs.make_environment(_ENV.value, 0)  # Raises the listing error.
  positive = {'num_actors': _NUM_ACTORS.value, 'eval_every': _EVAL_EVERY.value,
              'eval_episodes': _EVAL_EPISODES.value,
              'final_eval_episodes': _FINAL_EVAL_EPISODES.value,
              'log_every': _LOG_EVERY.value,
              'checkpoint_every': _CHECKPOINT_EVERY.value}
  non_negative = {'offline_steps': _OFFLINE_STEPS.value,
                  'online_steps': _ONLINE_STEPS.value}
  for name, value in positive.items():
    if value is not None and value <= 0:
      raise ValueError(f'--{name} must be positive, got {value}')
  for name, value in non_negative.items():
    if value is not None and value < 0:
      raise ValueError(f'--{name} must be >= 0, got {value}')
  if _BATCH_SIZE.value is not None and _BATCH_SIZE.value <= 0:
    raise ValueError(f'--batch_size must be positive, got {_BATCH_SIZE.value}')
  if _ONLINE_FRACTION.value is not None and not 0 <= _ONLINE_FRACTION.value <= 1:
    raise ValueError('--online_fraction must be in [0, 1]')
  if not 0 <= _ACTOR_NICENESS.value <= 19:
    raise ValueError(f'--actor_niceness must be in 0..19, got '
                     f'{_ACTOR_NICENESS.value}')
  if (_UPDATES_PER_ENV_STEP.value is not None and
      _UPDATES_PER_ENV_STEP.value <= 0):
    raise ValueError('--updates_per_env_step must be positive')


def _parse_flags(argv):
  """absl's parser, with a bad flag as one `error:` line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _vertex_config() -> multi_machine.VertexConfig:
  return multi_machine.VertexConfig(
      learner_machine_type=_VERTEX_LEARNER_MACHINE_TYPE.value,
      learner_accelerator=_VERTEX_LEARNER_ACCELERATOR.value,
      learner_accelerator_count=_VERTEX_LEARNER_ACCELERATOR_COUNT.value,
      replay_machine_type=_VERTEX_REPLAY_MACHINE_TYPE.value,
      actor_machine_type=_VERTEX_ACTOR_MACHINE_TYPE.value,
      evaluator_machine_type=_VERTEX_EVALUATOR_MACHINE_TYPE.value)


def _workdir() -> str:
  return os.path.abspath(_WORKDIR.value or os.path.join(
      'runs', f'{_ENV.value}-seed{_SEED.value}'))


def _check_workdir(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.writable')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'--workdir {workdir} is not writable ({e.strerror}); '
                     'pass a directory you can write to') from e


def _finished_run(workdir: str, config) -> bool:
  """True when workdir holds a finished run of this budget (or a larger)."""
  path = os.path.join(workdir, program_lib.SUMMARY_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    summary = json.load(f)
  return (summary.get('offline_steps') == config.offline_steps and
          summary.get('actor_steps', -1) >= config.online_steps)


def main(_):
  workdir = _workdir()
  launch_type = flags.FLAGS.lp_launch_type
  on_vertex = launch_type == multi_machine.LAUNCH_TYPE
  try:
    _check_flags()
    if on_vertex:
      vertex_config = _vertex_config()
      multi_machine.check_config(vertex_config)
      multi_machine.check_shared_path('workdir', workdir)
    _check_workdir(workdir)
    config = run_setup.make_config(
        _ENV.value, dataset=_DATASET.value, offline_steps=_OFFLINE_STEPS.value,
        online_steps=_ONLINE_STEPS.value, batch_size=_BATCH_SIZE.value,
        updates_per_env_step=_UPDATES_PER_ENV_STEP.value,
        online_fraction=_ONLINE_FRACTION.value,
        exploration_noise=_EXPLORATION_NOISE.value,
        expectile=_EXPECTILE.value, temperature=_TEMPERATURE.value,
        online_actor_learning_rate=_ONLINE_ACTOR_LR.value,
        actor_cosine_decay=_ACTOR_COSINE_DECAY.value)
    if _finished_run(workdir, config):
      print(f'finished: {workdir} already holds a run of '
            f'{config.online_steps} online steps (summary.json); pass a '
            'larger --online_steps to continue it')
      return
    spec = envs.make_environment(_ENV.value, 0)
    obs_dim = spec.observation_spec().shape[0]
    act_dim = spec.action_spec().shape[0]
    make_dataset_fn = (multi_machine.make_offline_dataset_fn if on_vertex
                       else run_setup.make_offline_dataset_fn)
    dataset_fn = make_dataset_fn(_ENV.value, _DATASET.value, obs_dim, act_dim)
    dataset_fn()  # Fail fast on a bad dataset, before any node starts.
  except ValueError as e:  # Bad flags or inputs: one line, no traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  run = program_lib.RunConfig(
      env_name=_ENV.value, workdir=workdir,
      num_actors=_NUM_ACTORS.value, seed=_SEED.value,
      eval_every=_EVAL_EVERY.value, eval_episodes=_EVAL_EPISODES.value,
      final_eval_episodes=_FINAL_EVAL_EPISODES.value,
      log_every_s=_LOG_EVERY.value,
      checkpoint_every_s=_CHECKPOINT_EVERY.value,
      actor_niceness=(0 if launch_type == 'local_mt'
                      else _ACTOR_NICENESS.value),
      actor_idle_scheduling=(launch_type != 'local_mt' and
                             _ACTOR_IDLE_SCHEDULING.value),
      supervised=launch_type in SUPERVISED_LAUNCH_TYPES)
  logging.info('config: %s', config)
  logging.info('run: %s', run)
  program = program_lib.make_program(config, dataset_fn, run)
  if run.supervised:
    sys.exit(_supervise(program, run, launch_type))
  if on_vertex:  # lp.launch returns None once the job is submitted.
    lines = multi_machine.launch(program, vertex_config)
    print(f'submitted: {program.name} to Vertex AI (one custom job); outputs '
          f'go to {workdir}, {program_lib.SUMMARY_FILE} when it finishes')
    for line in lines:
      print(f'  {line}')
    return
  manager = lp.launch(program, terminal='current_terminal',
                      local_resources=placement.local_resources())
  try:
    manager.wait()  # lp.launch returns once the nodes are started.
  except RuntimeError as e:  # A node failed before stopping the program.
    logging.error('a node failed: %s', e)
  problem = program_lib.run_outcome(run.workdir)
  if problem:
    print(f'error: run failed: {problem} (see the node logs above)',
          file=sys.stderr)
    sys.exit(1)
  _print_done(os.path.join(run.workdir, program_lib.SUMMARY_FILE))


def _print_done(summary_path: str):
  print(f'done: {summary_path}')
  with open(summary_path) as f:
    line = program_lib.result_line(json.load(f))
  if line:
    print(line)


def _supervise(program, run, launch_type) -> int:
  """Launches under the supervisor; returns the exit code."""
  # Per-node JAX platform: a GPU learner, CPU actors (iql_acme/placement.py).
  nodes = supervisor.launch(program, launch_type,
                            local_resources=placement.local_resources())
  handles = program.iql_handles
  summary = os.path.join(run.workdir, program_lib.SUMMARY_FILE)
  watch = supervisor.Supervisor(
      nodes,
      finished=lambda: os.path.exists(summary),
      release_actor=lambda i: supervisor.courier_client(
          handles['counter']).release(i),
      checkpoint=lambda: supervisor.courier_client(
          handles['learner'],
          timeout_s=supervisor.STOP_CHECKPOINT_TIMEOUT_S).checkpoint(),
      error_file=lambda node: program_lib.node_error(run.workdir, node))
  watch.install_signal_handlers()
  code = watch.run()
  if code == 0:
    _print_done(summary)
  else:
    print(watch.message, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  if launch_type == 'local_mt':
    os._exit(code)  # Node threads may be blocked in C++; end them with us.
  return code


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
