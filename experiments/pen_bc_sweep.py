"""How far BC alone gets on a make_pen_demos run's data: a sweep.

Refits the BC policy (2x256 MLP, `iql_acme.standin.bc`, as make_pen_demos
does) on the run's cached demos plus its DAgger labels up to `rounds`, once
per configuration, and scores each noise-free on fresh targets. Nothing is
planned or relabelled: it reads the caches make_pen_demos left in
--planner_dir (`episode_SEED_INDEX.npz`) and --dagger_dir
(`dagger_ROUND_INDEX.npz`).

The evaluation targets (env seeds EVAL_SEED_OFFSET + --eval_seed_offset + j)
are by default disjoint from the gate's own (offset 0), so a configuration
picked here can be confirmed on the gate's targets without the pick having
seen them.

  python experiments/pen_bc_sweep.py \
      --planner_dir out/pen_a_work/planner_episodes_f86228b1 \
      --dagger_dir out/pen_a_work/planner_episodes_f86228b1/dagger_0_bf5d0c7a \
      --num_demos 100 --out out/pen_bc_sweep.json \
      --configs 'rounds=3;rounds=3,seed=1;rounds=5,steps=30000,noise=0.1'

Configuration keys (comma-separated key=value, configurations separated by
';'): rounds (DAgger rounds of labels, 0: demos alone), steps, lr, wd
(weight decay), noise (input noise std), seed. Prints one line per
configuration (success rate +- standard error) and writes them to --out.
"""

import argparse
import dataclasses
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_pen_demos as pen  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import envs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top,wrong-import-position

# Sweep keys -> (BCConfig field or None, type).
KEYS = {'rounds': (None, int), 'seed': (None, int),
        'steps': ('num_steps', int), 'lr': ('learning_rate', float),
        'wd': ('weight_decay', float), 'noise': ('input_noise', float)}
DEFAULT_EVAL_SEED_OFFSET = 1_000  # Disjoint from the gate's targets (0..).


def parse_configs(text: str) -> list:
  """'rounds=3,steps=100;rounds=0' -> [{'rounds': 3, 'steps': 100}, ...]."""
  configs = []
  for item in filter(None, (part.strip() for part in text.split(';'))):
    config = {'rounds': 0, 'seed': 0}
    for pair in item.split(','):
      key, _, value = pair.partition('=')
      key = key.strip()
      if key not in KEYS or not value:
        raise ValueError(f'bad configuration item {pair!r} in {item!r}: use '
                         f'key=value with key one of {", ".join(KEYS)}')
      config[key] = KEYS[key][1](value)
    configs.append(config)
  if not configs:
    raise ValueError('--configs is empty: give at least one configuration')
  return configs


def load_demos(planner_dir: str, num_demos: int, seed: int):
  """The first `num_demos` successful planner episodes, in episode order."""
  files = sorted(glob.glob(os.path.join(planner_dir, f'episode_{seed}_*.npz')))
  demos = [e for e in map(pen.load_npz, files)
           if envs.episode_success(pen.ENV_NAME, e['goal_achieved'])]
  demos = demos[:num_demos]
  if len(demos) < num_demos:
    raise ValueError(f'{planner_dir} holds {len(demos)} successful planner '
                     f'episodes, fewer than --num_demos {num_demos}; run '
                     'make_pen_demos.py first or lower --num_demos')
  return ([e['observations'][:-1] for e in demos],
          [e['actions'] for e in demos])


def run_config(config: dict, demos, rounds: list, args, env) -> dict:
  labelled = [pair for episodes in rounds[:config['rounds']]
              for pair in episodes]
  inputs = np.concatenate(demos[0] + [obs for obs, _, _ in labelled])
  targets = np.concatenate(demos[1] + [label for _, _, label in labelled])
  bc_config = dataclasses.replace(bc.BCConfig(), **{
      KEYS[k][0]: v for k, v in config.items() if KEYS[k][0]})
  start = time.time()
  params = bc.fit_bc(inputs, targets, bc_config, seed=config['seed'],
                     log_fn=lambda _: None)
  seeds = [pen.EVAL_SEED_OFFSET + args.eval_seed_offset + j
           for j in range(args.num_eval_episodes)]
  result = pen.evaluate_policy(env, bc.bc_policy(params), seeds)
  return {'config': config, 'bc': dataclasses.asdict(bc_config),
          'training_transitions': int(len(targets)),
          'success_rate': result['success_rate'],
          'standard_error': result['standard_error'],
          'episodes': result['episodes'],
          'mean_steps_achieved': result['mean_steps_achieved'],
          'seconds': round(time.time() - start, 1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--planner_dir', required=True)
  parser.add_argument('--dagger_dir', required=True)
  parser.add_argument('--num_demos', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0,
                      help='the make_pen_demos --seed of the cached episodes')
  parser.add_argument('--configs', required=True)
  parser.add_argument('--num_eval_episodes', type=int, default=50)
  parser.add_argument('--eval_seed_offset', type=int,
                      default=DEFAULT_EVAL_SEED_OFFSET,
                      help='0: the gate\'s own targets')
  parser.add_argument('--out', required=True, help='JSON file of results')
  args = parser.parse_args(argv)
  try:
    configs = parse_configs(args.configs)
    demos = load_demos(args.planner_dir, args.num_demos, args.seed)
    rounds = pen.load_dagger_rounds(args.dagger_dir,
                                    max(c['rounds'] for c in configs))
  except ValueError as e:
    parser.error(str(e))
  env = envs.make_gymnasium_env(pen.ENV_NAME, seed=pen.EVAL_SEED_OFFSET)
  results = []
  for index, config in enumerate(configs):
    result = run_config(config, demos, rounds, args, env)
    results.append(result)
    print(f'[{index + 1}/{len(configs)}] {config}: '
          f'{result["training_transitions"]} labelled states, success '
          f'{100 * result["success_rate"]:.0f}% +- '
          f'{100 * result["standard_error"]:.1f} over {result["episodes"]} '
          f'fresh targets ({result["seconds"]} s)', flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'planner_dir': args.planner_dir, 'dagger_dir': args.dagger_dir,
               'num_demos': args.num_demos,
               'eval_env_seeds': f'{pen.EVAL_SEED_OFFSET} + '
                                 f'{args.eval_seed_offset} + j',
               'results': results}, f, indent=2)


if __name__ == '__main__':
  main()
