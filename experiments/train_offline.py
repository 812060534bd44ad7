"""Offline IQL from a dataset file, in one process, one or several seeds at once.

Trains with the IQL core (`iql_acme.training`: on-device sampling, `lax.scan`
of updates; no Acme, Reverb or TensorFlow in the loop) for `--steps` gradient
updates on a dataset (any source `iql_acme.data.load_dataset` accepts: a
transition .npz, a D4RL .hdf5, AWAC .npy files, ...), with the paper's
hyperparameters for the environment's domain (`iql_acme.envs.domain_of`),
and on an embedded stand-in the overrides tuned on it, as the launcher
(`run_setup.make_config`).
`--offline_steps` is the config's offline phase length, which sets the
actor's learning-rate schedule (cosine over it, then constant); `--steps` may
exceed it. Every `--eval_every` updates, at the start and at the end, each
seed's deterministic policy (the mean action) runs `--eval_episodes` episodes.

`--seeds 0,1,2` trains the seeds together: one jitted call runs `jax.vmap`
over the seeds' stacked training states, all sampling from the one dataset on
device. Seed i's run equals a `--seed i` run (up to float rounding).

`--as_finetune_learner N`: seed S starts from the learner key of
`launch/run_finetune.py --seed=S --num_actors=N`, so its offline phase is
that run's (the same initial parameters and offline batches): the control
arm of an experiment shares the fine-tuned run's offline end, and the two
differ only in what follows (finetune_vs_offline.py passes it).

Outputs in --out DIR, with `--seed N` (default 0):
  train.csv            the learner's metrics per jitted call (losses, V, Q,
                       AWR weights, actor learning rate, updates_per_s)
  eval.csv             one row per evaluation (every key that
                       `iql_acme.evaluation.evaluate` returns, learner_steps)
  summary.json         flags, config, final evaluation, mean update rate
  learning_curve.png   experiments/plot_run.py's figure of the above
with `--seeds`: the above in DIR/seed_<i>/, and DIR/summary.json with each
seed's final evaluation and the mean and standard error over seeds of
normalized_score (and success_rate where the task has one).

Example:
  python experiments/train_offline.py --env pen-binary-v0 \
      --dataset data/pen.npz --out out/pen_offline --steps 25000 --seeds 0,1,2
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from iql_acme import envs
from iql_acme import evaluation
from iql_acme import networks as iql_networks
from iql_acme import run_setup
from iql_acme import training
from iql_acme.data import DatasetError, load_dataset
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli
import plot_run
# pylint: enable=g-import-not-at-top,wrong-import-position

PROGRESS_PERIOD_S = 10.0   # seconds between progress lines
MAX_STEPS_PER_CALL = 100   # updates per jitted call (lax.scan), at most
EVAL_SEED_OFFSET = 10_000  # evaluation env seeds differ from training's
DEFAULT_SEED = 0
SUMMARY_FILE = 'summary.json'
# Final-evaluation keys aggregated over seeds (when not None).
AGGREGATED_KEYS = ('normalized_score', 'success_rate', 'mean_return')


class _Parser(argparse.ArgumentParser):
  """Bad flags: one line on stderr and exit status 2, no usage dump."""

  def error(self, message):
    fail(message)


def fail(message: str):
  print(f'train_offline.py: error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_seeds(text: str) -> List[int]:
  try:
    seeds = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    fail(f'--seeds must be comma-separated integers, got {text!r}')
  if not seeds:
    fail('--seeds is empty')
  if len(set(seeds)) != len(seeds):
    fail(f'--seeds has repeated seeds: {text!r}')
  if min(seeds) < 0:
    fail(f'--seeds must be non-negative, got {text!r}')
  return seeds


def parse_args(argv=None):
  parser = _Parser(description=__doc__.split('\n')[0])
  parser.add_argument('--env', required=True,
                      help='environment name, e.g. pen-binary-v0')
  parser.add_argument('--dataset', required=True,
                      help='dataset source (path of a .npz, .hdf5, ...)')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--steps', type=int, default=None,
                      help='gradient updates in total (default: offline_steps)')
  parser.add_argument('--offline_steps', type=int, default=None,
                      help="the config's offline phase: the actor learning "
                      'rate decays (cosine) over it, then stays constant '
                      "(default: the domain preset's)")
  parser.add_argument('--eval_every', type=int, default=5_000,
                      help='updates between evaluations')
  parser.add_argument('--eval_episodes', type=int, default=10)
  seeds = parser.add_mutually_exclusive_group()
  seeds.add_argument('--seed', type=int, default=None,
                     help=f'one seed, outputs in --out ({DEFAULT_SEED})')
  seeds.add_argument('--seeds', type=str, default=None,
                     help='comma-separated seeds trained together (vmap); '
                     'outputs in --out/seed_<i>/')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--as_finetune_learner', type=int, default=None,
                      metavar='NUM_ACTORS',
                      help="start each seed from the learner key of "
                      "run_finetune.py's run with that seed and NUM_ACTORS "
                      'actors (its offline phase); default: PRNGKey(seed)')
  cli.add_iql_flags(parser)
  args = parser.parse_args(argv)
  for flag in ('steps', 'offline_steps'):
    if getattr(args, flag) is not None and getattr(args, flag) <= 0:
      fail(f'--{flag} must be positive, got {getattr(args, flag)}')
  if args.as_finetune_learner is not None and args.as_finetune_learner <= 0:
    fail('--as_finetune_learner is the runs\' --num_actors, a positive '
         f'integer; got {args.as_finetune_learner}')
  for flag in ('eval_every', 'eval_episodes', 'batch_size'):
    if getattr(args, flag) <= 0:
      fail(f'--{flag} must be positive, got {getattr(args, flag)}')
  if args.seed is not None and args.seed < 0:
    fail(f'--seed must be non-negative, got {args.seed}')
  args.seed_list = (parse_seeds(args.seeds) if args.seeds is not None
                    else [DEFAULT_SEED if args.seed is None else args.seed])
  return args


def steps_per_call(eval_every: int) -> int:
  """The largest divisor of eval_every up to MAX_STEPS_PER_CALL, so that
  the learner's chunks land exactly on the evaluation steps."""
  return max(d for d in range(1, min(eval_every, MAX_STEPS_PER_CALL) + 1)
             if eval_every % d == 0)


def seed_dirs(out: str, seeds: Sequence[int], multi_seed: bool) -> List[str]:
  """Each seed's output directory: --out itself for one `--seed`."""
  if not multi_seed:
    return [out]
  return [os.path.join(out, f'seed_{seed}') for seed in seeds]


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


class EvalLog:
  """eval.csv: the evaluator's columns, plus any key `evaluate` adds."""

  def __init__(self, path: str):
    self._path, self._writer = path, None

  def write(self, row: Dict):
    if self._writer is None:
      extra = tuple(k for k in row if k not in evaluation.EVAL_CSV_FIELDS)
      self._writer = evaluation.CsvWriter(
          self._path, evaluation.EVAL_CSV_FIELDS + extra)
    self._writer.write(row)


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


def environment_spec(environment) -> iql_networks.ShapeSpec:
  """The networks' spec from a dm_env environment (no Acme needed)."""
  obs, act = environment.observation_spec(), environment.action_spec()
  return iql_networks.ShapeSpec(
      iql_networks.ArraySpec(obs.shape),
      iql_networks.ArraySpec(act.shape, act.minimum, act.maximum))


def across_seeds(final_evals: Sequence[Dict]) -> Dict[str, Optional[Dict]]:
  """Mean and standard error over seeds of each AGGREGATED_KEYS value."""
  result = {}
  for key in AGGREGATED_KEYS:
    values = [e.get(key) for e in final_evals]
    if any(v is None for v in values):
      result[key] = None
      continue
    result[key] = {'mean': float(np.mean(values)),
                   'stderr': evaluation.standard_error(values),
                   'values': [float(v) for v in values]}
  return result


def main(argv=None):
  args = parse_args(argv)
  seeds, multi_seed = args.seed_list, args.seeds is not None
  try:
    domain = envs.domain_of(args.env)
    environments = [envs.make_environment(args.env, seed + EVAL_SEED_OFFSET)
                    for seed in seeds]
  except ValueError as e:
    fail(f'--env: {e}')
  spec = environment_spec(environments[0])
  obs_dim = int(np.prod(spec.observations.shape))
  act_dim = int(np.prod(spec.actions.shape))
  try:
    data, reward_transform = load_dataset(args.dataset, domain=domain,
                                          obs_dim=obs_dim, act_dim=act_dim)
  except (DatasetError, OSError) as e:
    fail(f'--dataset: {e}')

  overrides = dict(batch_size=args.batch_size,
                   offline_steps_per_call=steps_per_call(args.eval_every))
  for flag in ('offline_steps',) + cli.IQL_FLAGS:
    if getattr(args, flag) is not None:
      overrides[flag] = getattr(args, flag)
  try:
    config = run_setup.make_config(args.env, dataset=args.dataset, **overrides)
  except ValueError as e:
    fail(f'--{e}')
  total_steps = args.steps or config.offline_steps
  dirs = seed_dirs(args.out, seeds, multi_seed)
  for d in dirs:
    os.makedirs(d, exist_ok=True)
  print(f'{args.env} (domain {domain}): {data.size:,} transitions from '
        f'{args.dataset}; reward transform scale={reward_transform.scale:g} '
        f'shift={reward_transform.shift:g}; {total_steps:,} updates '
        f'(offline_steps {config.offline_steps:,}), batch {args.batch_size}, '
        f'{config.offline_steps_per_call} per call; seeds {seeds}; '
        f'device {jax.devices()[0].platform}', flush=True)

  networks = iql_networks.make_networks(spec, config)
  optimizers = training.make_optimizers(config)
  device_data = training.device_dataset(data)
  keys = (training.seed_keys(seeds) if args.as_finetune_learner is None
          else training.learner_keys(seeds, args.as_finetune_learner))
  states = training.init_training_states(networks, optimizers, keys)
  multi_seed_steps = training.make_multi_seed_steps(networks, config,
                                                    optimizers)
  train_logs = [CsvLog(os.path.join(d, 'train.csv')) for d in dirs]
  eval_logs = [EvalLog(os.path.join(d, 'eval.csv')) for d in dirs]
  select_action, set_policy = make_select_action(networks)
  start = time.time()
  steps_done = 0

  def run_evaluations():
    rows = []
    policies = jax.device_get(states.policy_params)
    for index, environment in enumerate(environments):
      set_policy(jax.tree_util.tree_map(lambda x: x[index], policies))  # pylint: disable=cell-var-from-loop
      result = evaluation.evaluate(environment, args.env, select_action,
                                   args.eval_episodes)
      row = {**result, 'learner_steps': steps_done, 'actor_steps': 0,
             'phase': 'offline', 'wall_time_s': round(time.time() - start, 2)}
      eval_logs[index].write(row)
      rows.append(row)
    scores = [r['normalized_score'] for r in rows]
    returns = ', '.join(f'{r["mean_return"]:.2f}' for r in rows)
    print(f'eval @ {steps_done:,}: return {returns}'
          + ('' if None in scores else
             ', normalized score ' + ', '.join(f'{s:.1f}' for s in scores)),
          flush=True)
    return rows

  last_evals = run_evaluations()  # The untrained policies: curves' origin.
  train_start, train_time, last_print = time.time(), 0.0, 0.0
  while steps_done < total_steps:
    num = min(config.offline_steps_per_call, total_steps - steps_done)
    step_start = time.time()
    states, metrics = multi_seed_steps(states, device_data, num)
    metrics = jax.device_get(metrics)  # Waits for the call to finish.
    now = time.time()
    elapsed = now - step_start
    train_time += elapsed
    steps_done += num
    for index, log in enumerate(train_logs):
      log.write({**{k: v[index] for k, v in metrics.items()},
                 'learner_steps': steps_done, 'phase': 'offline',
                 # Each seed did `num` updates in `elapsed` seconds.
                 'updates_per_s': num / elapsed})
    if steps_done % args.eval_every == 0 or steps_done == total_steps:
      last_evals = run_evaluations()
    if now - last_print >= PROGRESS_PERIOD_S or steps_done == total_steps:
      last_print = now
      # Updates/s per seed, of the learner alone; the ETA counts evaluations.
      rate = steps_done / max(train_time, 1e-9)
      eta = (total_steps - steps_done) * (now - train_start) / steps_done
      mean = {k: float(np.mean(v)) for k, v in metrics.items()}
      print(f'step {steps_done:,}/{total_steps:,} '
            f'({100 * steps_done / total_steps:.0f}%)  {rate:.0f} updates/s'
            + (f' per seed x {len(seeds)}' if multi_seed else '')
            + f'  ETA {format_duration(eta)}  critic_loss '
            f'{mean["critic_loss"]:.4g}  value_loss {mean["value_loss"]:.4g}'
            f'  actor_loss {mean["actor_loss"]:.4g}', flush=True)
  for log in train_logs:
    log.close()

  elapsed = time.time() - start
  rate = steps_done / max(train_time, 1e-9)
  common = {
      'env': args.env, 'dataset': args.dataset, 'domain': domain,
      'steps': steps_done, 'offline_steps': config.offline_steps,
      'transitions': data.size, 'wall_time_s': round(elapsed, 2),
      'as_finetune_learner': args.as_finetune_learner,
      'updates_per_s': round(rate, 2),  # Per seed.
      'config': {k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in dataclasses.asdict(config).items()},
  }
  for seed, directory, final_eval in zip(seeds, dirs, last_evals):
    with open(os.path.join(directory, SUMMARY_FILE), 'w') as f:
      json.dump({**common, 'seed': seed, 'final_eval': final_eval}, f,
                indent=2)
    png = plot_run.plot_run(directory)
  if multi_seed:
    summary = {**common, 'seeds': seeds,
               'seed_updates_per_s': round(rate * len(seeds), 2),
               'final_eval': {str(s): e for s, e in zip(seeds, last_evals)},
               **across_seeds(last_evals)}
    with open(os.path.join(args.out, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2)
    score = summary['normalized_score']
    if score is not None:
      print(f'normalized score over {len(seeds)} seeds: {score["mean"]:.1f}'
            f' +- {score["stderr"]:.1f} (standard error)', flush=True)
    png = os.path.join(args.out, 'seed_*', 'learning_curve.png')
  print(f'done in {format_duration(elapsed)}: {png}', flush=True)


if __name__ == '__main__':
  main()
