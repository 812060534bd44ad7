"""BC level: behaviour cloning scored exactly as the IQL evaluator scores.

Fits the stand-in generator's BC (a 2x256 MLP by MSE, `iql_acme.standin.bc`)
on a dataset the project's loader reads (default: the env's embedded
stand-in) once per seed, and/or scores saved BC parameters (--policy), with
`iql_acme.evaluation.evaluate` on the evaluator's fixed start states, so the
numbers sit beside the rows of `logs/evaluator.csv`.

  python experiments/bc_baseline.py --env pen-binary-v0 --seeds 0,1,2 \
      --policy out/pen_a_work/planner_episodes_f86228b1/dagger_0_bf5d0c7a/bc_params_final.npz \
      --out out/bc_baseline/pen-binary-v0.json

Prints one line per policy (score +- standard error over the episodes) and
the mean +- standard error across seeds; writes them to --out (JSON).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cli
import numpy as np

from iql_acme import envs
from iql_acme import evaluation
from iql_acme import run_setup
from iql_acme.standin import bc
# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--env', default='pen-binary-v0')
  parser.add_argument('--dataset', default=None,
                      help='default: the embedded stand-in for --env')
  parser.add_argument('--seeds', type=cli.int_list, default='0,1,2',
                      help='one BC fit per seed on the dataset ("" for none)')
  parser.add_argument('--policy', default=None,
                      help='saved BC parameters (.npz) to score as well')
  parser.add_argument('--bc_steps', type=int, default=30_000)
  parser.add_argument('--bc_input_noise', type=float, default=0.1)
  parser.add_argument('--eval_episodes', type=int,
                      default=evaluation.DEFAULT_EVAL_EPISODES)
  parser.add_argument('--out', required=True, help='JSON file of results')
  args = parser.parse_args(argv)
  if not args.seeds and not args.policy:
    parser.error('nothing to score: give --seeds or --policy')
  if args.policy and not os.path.isfile(args.policy):
    parser.error(f'--policy {args.policy} is not a file: pass the .npz that '
                 'make_pen_demos.py wrote (bc_params_final.npz)')
  cli.require_at_least(parser, args, ('bc_steps', 'eval_episodes'))
  return args


def score(environment, args, params, name) -> dict:
  policy = bc.bc_policy(params)
  result = evaluation.evaluate(environment, args.env,
                               lambda o: np.clip(policy(o), -1.0, 1.0),
                               args.eval_episodes)
  print(f'{name}: score {result["normalized_score"]:.1f} +- '
        f'{result["normalized_score_se"]:.1f} over {result["episodes"]} '
        'evaluation episodes', flush=True)
  return {'name': name, **result}


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  environment = envs.make_environment(args.env, seed=0)
  results, fitted = [], []
  if args.policy:
    results.append(score(environment, args, dict(np.load(args.policy)),
                         f'policy {args.policy}'))
  if args.seeds:
    source = run_setup.resolve_dataset_source(args.env, args.dataset)
    spec = environment.action_spec()
    transitions, _ = run_setup.load_offline_dataset(
        source, envs.domain_of(args.env),
        environment.observation_spec().shape[-1], spec.shape[-1])
    config = dataclasses.replace(bc.BCConfig(), num_steps=args.bc_steps,
                                 input_noise=args.bc_input_noise)
    for seed in args.seeds:
      params = bc.fit_bc(np.asarray(transitions.observations),
                         np.asarray(transitions.actions), config, seed=seed,
                         log_fn=lambda _: None)
      fitted.append(score(environment, args, params,
                          f'BC on {source}, seed {seed}'))
    values = [r['normalized_score'] for r in fitted]
    across = {'mean': float(np.mean(values)),
              'se': evaluation.standard_error(values), 'n': len(values)}
    print(f'BC on the dataset, {len(values)} seeds: {across["mean"]:.1f} +- '
          f'{across["se"]:.1f}', flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'env': args.env, 'args': vars(args), 'policy': results,
               'dataset_bc': fitted,
               'dataset_bc_across_seeds': across if fitted else None,
               'seconds': round(time.time() - start, 1)}, f, indent=2)


if __name__ == '__main__':
  main()
