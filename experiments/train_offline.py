"""Offline IQL from a dataset file, in one process, with periodic evaluation.

Trains `iql_acme.learning.IQLLearner` for `--steps` gradient updates on a
dataset (any source `iql_acme.data.load_dataset` accepts: a transition
.npz, a D4RL .hdf5, AWAC .npy files, ...), with the paper's hyperparameters
for the environment's domain (`iql_acme.envs.domain_of`). Every
`--eval_every` updates, and at the end, the deterministic policy (the mean
action) runs `--eval_episodes` episodes in the environment.

Outputs in --out DIR:
  train.csv            the learner's metrics per jitted call (losses, V, Q,
                       AWR weights, actor learning rate, updates_per_s)
  eval.csv             one row per evaluation (`EVAL_CSV_FIELDS`)
  summary.json         flags, config, final evaluation, mean update rate
  learning_curve.png   experiments/plot_run.py's figure of the above

Example:
  python experiments/train_offline.py --env pen-binary-v0 \
      --dataset data/pen.npz --out out/pen_offline --steps 25000
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from acme import specs
import jax
import numpy as np

from iql_acme import envs
from iql_acme import evaluation
from iql_acme import learning
from iql_acme import networks as iql_networks
from iql_acme.config import config_for_domain
from iql_acme.data import DatasetError, load_dataset
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot_run
# pylint: enable=g-import-not-at-top,wrong-import-position

PROGRESS_PERIOD_S = 10.0   # seconds between progress lines
MAX_STEPS_PER_CALL = 100   # updates per jitted call (lax.scan), at most
EVAL_SEED_OFFSET = 10_000  # evaluation env seeds differ from training's


class _Parser(argparse.ArgumentParser):
  """Bad flags: one line on stderr and exit status 2, no usage dump."""

  def error(self, message):
    fail(message)


def fail(message: str):
  print(f'train_offline.py: error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_args(argv=None):
  parser = _Parser(description=__doc__.split('\n')[0])
  parser.add_argument('--env', required=True,
                      help='environment name, e.g. pen-binary-v0')
  parser.add_argument('--dataset', required=True,
                      help='dataset source (path of a .npz, .hdf5, ...)')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--steps', type=int, default=100_000,
                      help='gradient updates in total')
  parser.add_argument('--eval_every', type=int, default=5_000,
                      help='updates between evaluations')
  parser.add_argument('--eval_episodes', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch_size', type=int, default=256)
  args = parser.parse_args(argv)
  for flag in ('steps', 'eval_every', 'eval_episodes', 'batch_size'):
    if getattr(args, flag) <= 0:
      fail(f'--{flag} must be positive, got {getattr(args, flag)}')
  return args


def steps_per_call(eval_every: int) -> int:
  """The largest divisor of eval_every up to MAX_STEPS_PER_CALL, so that
  the learner's chunks land exactly on the evaluation steps."""
  return max(d for d in range(1, min(eval_every, MAX_STEPS_PER_CALL) + 1)
             if eval_every % d == 0)


class CsvLog:
  """The learner's logger: rows to a CSV, columns fixed by the first row."""

  def __init__(self, path: str):
    self._file = open(path, 'w', newline='')  # pylint: disable=consider-using-with
    self._writer = None
    self.last = {}

  def write(self, row):
    row = {k: (float(v) if isinstance(v, (np.number, np.ndarray)) else v)
           for k, v in row.items()}
    if self._writer is None:
      self._writer = csv.DictWriter(self._file, list(row),
                                    extrasaction='ignore')
      self._writer.writeheader()
    self._writer.writerow(row)
    self._file.flush()
    self.last = row

  def close(self):
    self._file.close()


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return (f'{hours}h{rest // 60:02d}m' if hours
          else f'{rest // 60}m{rest % 60:02d}s')


def make_select_action(networks):
  """Deterministic policy (the mean action) as obs -> action, jitted."""
  policy = jax.jit(iql_networks.make_evaluation_policy(networks))
  key = jax.random.PRNGKey(0)  # Unused: no noise at evaluation.
  params = {}

  def select_action(observation):
    return np.asarray(policy(params['policy'], key,
                             np.asarray(observation, np.float32)))

  def set_params(policy_params):
    params['policy'] = policy_params
  return select_action, set_params


def main(argv=None):
  args = parse_args(argv)
  try:
    domain = envs.domain_of(args.env)
    environment = envs.make_environment(args.env, args.seed + EVAL_SEED_OFFSET)
  except ValueError as e:
    fail(f'--env: {e}')
  spec = specs.make_environment_spec(environment)
  obs_dim = int(np.prod(spec.observations.shape))
  act_dim = int(np.prod(spec.actions.shape))
  try:
    data, reward_transform = load_dataset(args.dataset, domain=domain,
                                          obs_dim=obs_dim, act_dim=act_dim)
  except (DatasetError, OSError) as e:
    fail(f'--dataset: {e}')

  config = config_for_domain(
      domain, offline_steps=args.steps, batch_size=args.batch_size,
      offline_steps_per_call=steps_per_call(args.eval_every))
  os.makedirs(args.out, exist_ok=True)
  print(f'{args.env} (domain {domain}): {data.size:,} transitions from '
        f'{args.dataset}; reward transform scale={reward_transform.scale:g} '
        f'shift={reward_transform.shift:g}; {args.steps:,} updates, batch '
        f'{args.batch_size}, {config.offline_steps_per_call} per call; '
        f'device {jax.devices()[0].platform}', flush=True)

  networks = iql_networks.make_networks(spec, config)
  train_log = CsvLog(os.path.join(args.out, 'train.csv'))
  learner = learning.IQLLearner(networks, config,
                                jax.random.PRNGKey(args.seed), data,
                                reward_transform=reward_transform,
                                logger=train_log)
  eval_log = evaluation.CsvWriter(os.path.join(args.out, 'eval.csv'))
  select_action, set_policy = make_select_action(networks)

  start = time.time()

  def run_evaluation():
    set_policy(learner.get_variables(['policy'])[0])
    result = evaluation.evaluate(environment, args.env, select_action,
                                 args.eval_episodes)
    row = {**result, 'learner_steps': learner.steps, 'actor_steps': 0,
           'phase': 'offline', 'wall_time_s': round(time.time() - start, 2)}
    eval_log.write(row)
    score = result['normalized_score']
    print(f'eval @ {learner.steps:,}: return {result["mean_return"]:.2f}'
          + ('' if score is None else f', normalized score {score:.1f}'),
          flush=True)
    return row

  last_eval = run_evaluation()  # The untrained policy: the curve's origin.
  train_start, train_time, last_print = time.time(), 0.0, 0.0
  while learner.in_offline_phase:
    step_start = time.time()
    learner.step()
    now = time.time()
    train_time += now - step_start
    if learner.steps % args.eval_every == 0 or not learner.in_offline_phase:
      last_eval = run_evaluation()
    if now - last_print >= PROGRESS_PERIOD_S or not learner.in_offline_phase:
      last_print = now
      # Updates/s of the learner alone; the ETA counts evaluations too.
      rate = learner.steps / max(train_time, 1e-9)
      eta = (args.steps - learner.steps) * (now - train_start) / learner.steps
      metrics = train_log.last
      print(f'step {learner.steps:,}/{args.steps:,} '
            f'({100 * learner.steps / args.steps:.0f}%)  {rate:.0f} updates/s'
            f'  ETA {format_duration(eta)}  critic_loss '
            f'{metrics.get("critic_loss", float("nan")):.4g}  value_loss '
            f'{metrics.get("value_loss", float("nan")):.4g}  actor_loss '
            f'{metrics.get("actor_loss", float("nan")):.4g}', flush=True)
  train_log.close()

  elapsed = time.time() - start
  summary = {
      'env': args.env, 'dataset': args.dataset, 'domain': domain,
      'steps': learner.steps, 'seed': args.seed,
      'transitions': data.size, 'wall_time_s': round(elapsed, 2),
      'updates_per_s': round(learner.steps / max(train_time, 1e-9), 2),
      'final_eval': last_eval,
      'config': {k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in dataclasses.asdict(config).items()},
  }
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  png = plot_run.plot_run(args.out)
  print(f'done in {format_duration(elapsed)}: {png}', flush=True)


if __name__ == '__main__':
  main()
