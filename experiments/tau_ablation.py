"""Effect of the expectile tau on a stitching task (paper: Table 3, Fig. 5).

The analogue of the paper's AntMaze tau ablation on the maze2d STAND-IN
dataset (`experiments/make_maze2d.py`: D4RL's noisy waypoint recipe on
gymnasium-robotics' PointMaze, not the published D4RL file). For every tau
and seed, offline IQL trains with the antmaze preset (beta 10, reward r - 1,
`iql_acme.config.PRESETS['antmaze']`) with only the expectile overridden, and
the deterministic policy (the mean action) is evaluated every `--eval_every`
updates and at the end.

Outputs in --out DIR:
  maze2d-<layout>-v1_<N>.hdf5 (.json, .png)  the stand-in dataset; reused
                          when present (make_maze2d's summary and coverage)
  tau_<tau>_seed_<seed>/  per run: train.csv (learner metrics), eval.csv
  tau_ablation_curves.csv one row per evaluation (`CURVE_FIELDS`)
  tau_ablation.csv        one row per (tau, seed): the final evaluation
                          (`FINAL_FIELDS`)
  tau_ablation.json       flags, dataset, config, final rows, curves, and the
                          per-tau mean/std over seeds
  tau_ablation.png        score vs learner steps per tau; final score and
                          success fraction vs tau

Success fraction: the fraction of evaluation episodes in which the point mass
entered the goal region (within 0.5 of the goal) at least once.

  python experiments/tau_ablation.py --layout medium --out out/tau_ablation
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from acme import specs
import cli
import dm_env
import jax
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from iql_acme import envs
from iql_acme import evaluation
from iql_acme import learning
from iql_acme import networks as iql_networks
from iql_acme.config import config_for_domain
from iql_acme.data import load_dataset
import make_maze2d
import train_offline
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_TAUS = '0.5,0.7,0.9'  # the paper's Table 3 columns
DEFAULT_SEEDS = '0'
# Sized for ~15-20 min on 2 CPU cores at nice 19: 3 taus x 30k updates.
DEFAULT_STEPS = 30_000
DEFAULT_EVAL_EVERY = 10_000
DEFAULT_EVAL_EPISODES = 10
DEFAULT_NUM_DATA_STEPS = 200_000
DEFAULT_BATCH_SIZE = 256
DATASET_SEED = 0  # One fixed dataset; the seeds vary training and evaluation.
PROGRESS_PERIOD_S = 15.0
NAME = 'tau_ablation'

FINAL_FIELDS = ('tau', 'seed', 'learner_steps', 'normalized_score',
                'mean_return', 'success_fraction', 'episodes', 'wall_time_s')
CURVE_FIELDS = ('tau', 'seed', 'learner_steps', 'normalized_score',
                'mean_return', 'success_fraction', 'episodes', 'wall_time_s')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--layout', choices=make_maze2d.LAYOUTS,
                      default='medium')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--taus', type=cli.float_list, default=DEFAULT_TAUS,
                      help='comma-separated expectiles')
  parser.add_argument('--seeds', type=cli.int_list, default=DEFAULT_SEEDS,
                      help='comma-separated training seeds')
  parser.add_argument('--steps', type=int, default=DEFAULT_STEPS,
                      help='gradient updates per run')
  parser.add_argument('--eval_every', type=int, default=DEFAULT_EVAL_EVERY)
  parser.add_argument('--eval_episodes', type=int,
                      default=DEFAULT_EVAL_EPISODES)
  parser.add_argument('--num_data_steps', type=int,
                      default=DEFAULT_NUM_DATA_STEPS,
                      help='stand-in dataset size (environment steps)')
  parser.add_argument('--batch_size', type=int, default=DEFAULT_BATCH_SIZE)
  args = parser.parse_args(argv)
  for flag in ('steps', 'eval_every', 'eval_episodes', 'num_data_steps',
               'batch_size'):
    if getattr(args, flag) <= 0:
      parser.error(f'--{flag} must be positive, got {getattr(args, flag)}')
  if not args.taus or not all(0.0 < t < 1.0 for t in args.taus):
    parser.error(f'--taus must lie in (0, 1), got {args.taus}')
  if not args.seeds:
    parser.error('--seeds is empty')
  return args


def ensure_dataset(out: str, layout: str, num_steps: int) -> str:
  """The stand-in dataset's path, generated first unless already there."""
  path = os.path.join(out, f'{make_maze2d.env_name(layout)}_{num_steps}.hdf5')
  if os.path.exists(path):  # make_maze2d writes then renames: complete.
    print(f'reusing dataset {path}', flush=True)
  else:
    make_maze2d.main(['--layout', layout, '--num_steps', str(num_steps),
                      '--out', path, '--seed', str(DATASET_SEED)])
  return path


class GoalTracker(dm_env.Environment):
  """Passes an environment through, noting which episodes reached the goal.

  Lets `evaluation.evaluate` (returns, normalized score) run unchanged while
  the success fraction is read from the per-step `goal_achieved` flag.
  """

  def __init__(self, environment: dm_env.Environment):
    self._environment = environment
    self.reached: List[bool] = []

  def reset(self) -> dm_env.TimeStep:
    self.reached.append(False)
    return self._environment.reset()

  def step(self, action) -> dm_env.TimeStep:
    timestep = self._environment.step(action)
    if timestep.first():  # The wrapper auto-reset after a LAST step.
      self.reached.append(False)
    elif self._environment.last_info.get('goal_achieved', False):
      self.reached[-1] = True
    return timestep

  def observation_spec(self):
    return self._environment.observation_spec()

  def action_spec(self):
    return self._environment.action_spec()

  def reward_spec(self):
    return self._environment.reward_spec()

  def discount_spec(self):
    return self._environment.discount_spec()

  def __getattr__(self, name):
    return getattr(self._environment, name)


def evaluate_with_success(tracker: GoalTracker, env_name: str, select_action,
                          episodes: int) -> Dict[str, float]:
  """evaluation.evaluate plus the fraction of episodes that reached the goal."""
  tracker.reached = []
  result = evaluation.evaluate(tracker, env_name, select_action, episodes)
  return {**result, 'success_fraction': float(np.mean(tracker.reached))}


def run_one(args, env_name: str, data, reward_transform, tau: float,
            seed: int, progress) -> List[Dict]:
  """Trains IQL with expectile `tau`; returns its evaluation rows."""
  config = config_for_domain(
      envs.domain_of(env_name), expectile=tau, offline_steps=args.steps,
      batch_size=args.batch_size,
      offline_steps_per_call=train_offline.steps_per_call(args.eval_every))
  run_dir = os.path.join(args.out, f'tau_{tau:g}_seed_{seed}')
  os.makedirs(run_dir, exist_ok=True)
  tracker = GoalTracker(envs.make_environment(
      env_name, seed + train_offline.EVAL_SEED_OFFSET))
  spec = specs.make_environment_spec(tracker)
  networks = iql_networks.make_networks(spec, config)
  train_log = train_offline.CsvLog(os.path.join(run_dir, 'train.csv'))
  learner = learning.IQLLearner(networks, config, jax.random.PRNGKey(seed),
                                data, reward_transform=reward_transform,
                                logger=train_log)
  eval_log = evaluation.CsvWriter(os.path.join(run_dir, 'eval.csv'))
  select_action, set_policy = train_offline.make_select_action(networks)
  start, rows = time.time(), []

  def run_evaluation():
    set_policy(learner.get_variables(['policy'])[0])
    result = evaluate_with_success(tracker, env_name, select_action,
                                   args.eval_episodes)
    row = {**result, 'tau': config.expectile, 'seed': seed,
           'learner_steps': learner.steps, 'actor_steps': 0,
           'phase': 'offline', 'wall_time_s': round(time.time() - start, 2)}
    eval_log.write(row)
    rows.append(row)
    print(f'  eval tau={tau:g} seed={seed} @ {learner.steps:,}: return '
          f'{row["mean_return"]:.1f}, score {row["normalized_score"]:.1f}, '
          f'success {row["success_fraction"]:.2f}', flush=True)

  run_evaluation()  # The untrained policy: each curve's origin.
  while learner.in_offline_phase:
    learner.step()
    progress.update(learner.steps, train_log.last)
    if learner.steps % args.eval_every == 0 or not learner.in_offline_phase:
      run_evaluation()
  train_log.close()
  progress.finish_run()
  return rows


class Progress:
  """Progress lines over the whole ablation: updates/s and an overall ETA."""

  def __init__(self, total_updates: int):
    self._total, self._done_before = total_updates, 0
    self._start = self._last = time.time()
    self._run_steps = 0

  def update(self, run_steps: int, metrics: Dict):
    self._run_steps = run_steps
    now = time.time()
    if now - self._last < PROGRESS_PERIOD_S:
      return
    self._last = now
    done = self._done_before + run_steps
    rate = done / (now - self._start)  # Evaluations included: honest ETA.
    eta = (self._total - done) / max(rate, 1e-9)
    print(f'{done:,}/{self._total:,} updates ({100 * done / self._total:.0f}%)'
          f'  {rate:.0f} updates/s  ETA {train_offline.format_duration(eta)}'
          f'  value_loss {metrics.get("value_loss", math.nan):.4g}'
          f'  actor_loss {metrics.get("actor_loss", math.nan):.4g}',
          flush=True)

  def finish_run(self):
    self._done_before += self._run_steps
    self._run_steps = 0


def summarize(finals: Sequence[Dict], taus: Sequence[float]) -> List[Dict]:
  """Mean and std over seeds of each tau's final evaluation."""
  summary = []
  for tau in taus:
    rows = [r for r in finals if r['tau'] == tau]
    entry = {'tau': tau, 'seeds': len(rows)}
    for key in ('normalized_score', 'mean_return', 'success_fraction'):
      values = [r[key] for r in rows]
      entry[f'{key}_mean'] = float(np.mean(values))
      entry[f'{key}_std'] = float(np.std(values))
    summary.append(entry)
  return summary


def write_csv(path: str, rows: Sequence[Dict], fields: Sequence[str]):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)


def plot(path: str, curves: Sequence[Dict], summary: Sequence[Dict],
         title: str):
  """Score vs learner steps per tau (seeds thin, mean thick); finals vs tau."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  colors = plt.get_cmap('viridis')(np.linspace(0.0, 0.85, len(summary)))
  for entry, color in zip(summary, colors):
    tau = entry['tau']
    rows = [r for r in curves if r['tau'] == tau]
    seeds = sorted({r['seed'] for r in rows})
    for seed in seeds:
      mine = sorted((r for r in rows if r['seed'] == seed),
                    key=lambda r: r['learner_steps'])
      axes[0].plot([r['learner_steps'] for r in mine],
                   [r['normalized_score'] for r in mine], color=color,
                   alpha=0.35 if len(seeds) > 1 else 1.0, linewidth=1.0,
                   marker='o', markersize=3,
                   label=None if len(seeds) > 1 else f'tau {tau:g}')
    if len(seeds) > 1:
      steps = sorted({r['learner_steps'] for r in rows})
      means = [np.mean([r['normalized_score'] for r in rows
                        if r['learner_steps'] == s]) for s in steps]
      axes[0].plot(steps, means, color=color, linewidth=2.0,
                   label=f'tau {tau:g} (mean of {len(seeds)})')
  axes[0].set_xlabel('learner steps')
  axes[0].set_ylabel('normalized score')
  axes[0].set_title('deterministic policy during training', fontsize=9)
  axes[0].legend(fontsize=8)
  for ax, key, label in ((axes[1], 'normalized_score', 'final normalized score'),
                         (axes[2], 'success_fraction',
                          'final success fraction')):
    taus = [e['tau'] for e in summary]
    ax.errorbar(taus, [e[f'{key}_mean'] for e in summary],
                yerr=[e[f'{key}_std'] for e in summary], fmt='o-',
                color='tab:blue', capsize=3, label='mean +- std over seeds')
    finals = [r for r in curves if r.get('final')]
    ax.plot([r['tau'] for r in finals], [r[key] for r in finals], 'x',
            color='grey', label='each seed')
    ax.set_xlabel('expectile tau')
    ax.set_ylabel(label)
    ax.set_xticks(taus)
    ax.legend(fontsize=8)
  axes[2].set_ylim(-0.05, 1.05)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  env_name = make_maze2d.env_name(args.layout)
  start = time.time()
  dataset = ensure_dataset(args.out, args.layout, args.num_data_steps)
  data, reward_transform = load_dataset(
      dataset, domain=envs.domain_of(env_name), obs_dim=4, act_dim=2)
  runs = [(tau, seed) for tau in args.taus for seed in args.seeds]
  print(f'{env_name}: {data.size:,} transitions; reward scale '
        f'{reward_transform.scale:g} shift {reward_transform.shift:g}; '
        f'{len(runs)} runs (taus {args.taus}, seeds {args.seeds}) x '
        f'{args.steps:,} updates; device {jax.devices()[0].platform}',
        flush=True)

  progress = Progress(len(runs) * args.steps)
  curves, finals = [], []
  for tau, seed in runs:
    rows = run_one(args, env_name, data, reward_transform, tau, seed, progress)
    rows[-1]['final'] = True
    curves.extend(rows)
    finals.append(rows[-1])
  summary = summarize(finals, args.taus)

  write_csv(os.path.join(args.out, f'{NAME}_curves.csv'), curves,
            CURVE_FIELDS)
  write_csv(os.path.join(args.out, f'{NAME}.csv'), finals, FINAL_FIELDS)
  # The settings every run shares; the expectile is each run's own.
  config = dataclasses.asdict(config_for_domain(
      envs.domain_of(env_name), offline_steps=args.steps,
      batch_size=args.batch_size))
  config['expectile'] = 'per run: see final[].tau'
  with open(os.path.join(args.out, f'{NAME}.json'), 'w') as f:
    json.dump({
        'env': env_name, 'dataset': dataset, 'transitions': data.size,
        'flags': vars(args), 'wall_time_s': round(time.time() - start, 1),
        'preset': {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in config.items()},
        'summary': summary,
        'final': [{k: r[k] for k in FINAL_FIELDS} for r in finals],
        'curves': [{k: r[k] for k in CURVE_FIELDS} for r in curves],
    }, f, indent=2)
  png = os.path.join(args.out, f'{NAME}.png')
  plot(png, curves, summary,
       f'IQL tau ablation on the {env_name} stand-in ({data.size:,} '
       f'transitions, {args.steps:,} updates, {args.eval_episodes} episodes '
       f'per evaluation, seeds {args.seeds})')

  print(f'\n{"tau":>5} {"seed":>4} {"score":>7} {"return":>7} {"success":>7}')
  for r in finals:
    print(f'{r["tau"]:5g} {r["seed"]:4d} {r["normalized_score"]:7.1f} '
          f'{r["mean_return"]:7.1f} {r["success_fraction"]:7.2f}')
  print(f'done in {train_offline.format_duration(time.time() - start)}: '
        f'{png}', flush=True)
  return summary


if __name__ == '__main__':
  main()
