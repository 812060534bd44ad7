"""Offline-to-online IQL: `python launch/run_finetune.py --env=pen-binary-v0 --lp_launch_type=local_mp`.

Offline IQL on the dataset, then online fine-tuning with Launchpad actors
feeding Reverb at one update per environment step, with an evaluator.
Outputs go to --workdir: logs/*.csv, tensorboard/, checkpoints/, summary.json.
A run resumes from the checkpoints in --workdir.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import launchpad as lp

from iql_acme import envs
from iql_acme import program as program_lib
from iql_acme import run_setup

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
    'online_steps', 20_000, 'Environment steps of fine-tuning, all actors.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 5_000,
                                   'Learner steps between evaluations.')
_EVAL_EPISODES = flags.DEFINE_integer('eval_episodes', 10,
                                      'Episodes per evaluation.')
_LOG_EVERY = flags.DEFINE_float('log_every', 10.0,
                                'Seconds between log lines and CSV rows.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Batch size (256).')
_UPDATES_PER_ENV_STEP = flags.DEFINE_float(
    'updates_per_env_step', None, 'Gradient updates per environment step (1).')
_ONLINE_FRACTION = flags.DEFINE_float(
    'online_fraction', None, 'Fixed online share of each batch; default: one '
    'uniform pool of offline and online data.')
_EXPLORATION_NOISE = flags.DEFINE_float(
    'exploration_noise', None, 'Std of Gaussian action noise (preset).')


def _check_flags():
  if _ENV.value not in envs.KNOWN_ENVIRONMENTS:
    envs.make_environment(_ENV.value, 0)  # Raises the listing error.
  positive = {'num_actors': _NUM_ACTORS.value, 'eval_every': _EVAL_EVERY.value,
              'eval_episodes': _EVAL_EPISODES.value,
              'log_every': _LOG_EVERY.value}
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
  if (_UPDATES_PER_ENV_STEP.value is not None and
      _UPDATES_PER_ENV_STEP.value <= 0):
    raise ValueError('--updates_per_env_step must be positive')


def main(_):
  try:
    _check_flags()
    config = run_setup.make_config(
        _ENV.value, offline_steps=_OFFLINE_STEPS.value,
        online_steps=_ONLINE_STEPS.value, batch_size=_BATCH_SIZE.value,
        updates_per_env_step=_UPDATES_PER_ENV_STEP.value,
        online_fraction=_ONLINE_FRACTION.value,
        exploration_noise=_EXPLORATION_NOISE.value)
    spec = envs.make_environment(_ENV.value, 0)
    obs_dim = spec.observation_spec().shape[0]
    act_dim = spec.action_spec().shape[0]
    dataset_fn = run_setup.make_offline_dataset_fn(
        _ENV.value, _DATASET.value, obs_dim, act_dim)
    dataset_fn()  # Fail fast on a bad dataset, before any node starts.
  except ValueError as e:  # Bad flags or inputs: one line, no traceback.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or os.path.join(
      'runs', f'{_ENV.value}-seed{_SEED.value}')
  run = program_lib.RunConfig(
      env_name=_ENV.value, workdir=os.path.abspath(workdir),
      num_actors=_NUM_ACTORS.value, seed=_SEED.value,
      eval_every=_EVAL_EVERY.value, eval_episodes=_EVAL_EPISODES.value,
      log_every_s=_LOG_EVERY.value)
  logging.info('config: %s', config)
  logging.info('run: %s', run)
  program = program_lib.make_program(config, dataset_fn, run)
  manager = lp.launch(program, terminal='current_terminal')
  try:
    manager.wait()  # lp.launch returns once the nodes are started.
  except RuntimeError as e:  # A node failed before stopping the program.
    logging.error('a node failed: %s', e)
  problem = program_lib.run_outcome(run.workdir)
  if problem:
    print(f'error: run failed: {problem} (see the node logs above)',
          file=sys.stderr)
    sys.exit(1)
  print(f'done: {os.path.join(run.workdir, program_lib.SUMMARY_FILE)}')


if __name__ == '__main__':
  app.run(main)
