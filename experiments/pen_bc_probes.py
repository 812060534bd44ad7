"""Why BC stalls near a third on the pen stand-in: probes on cached data.

Each probe reads a make_pen_demos run's caches (--planner_dir demos,
--dagger_dir policy-guided DAgger labels and `bc_params_final.npz`) and
scores policies noise-free on 50 held-out targets (env seeds
EVAL_SEED_OFFSET + --eval_seed_offset + j, not the gate's by default):

  anatomy          where the final BC fails: per target-angle bin, how many
                   episodes reach the goal, succeed, drop the pen, and when
  label_noise      two policy-guided labels of the same visited state: how
                   much of the labels' variance is planner noise, and how
                   big the systematic correction to the policy is
  ensemble         BC refits with several seeds, alone and averaged
  self_imitation   rounds of noisy BC rollouts; successes join the data
  prev_action      BC given the previously executed action as an input
  unfiltered       BC on the planner's unfiltered action (the label with
                   the executed-action filter undone)
  low_noise_labels DAgger rounds whose planner samples with smaller noise

  python experiments/pen_bc_probes.py anatomy \
      --planner_dir out/pen_a_work/planner_episodes_f86228b1 \
      --dagger_dir out/pen_a_work/planner_episodes_f86228b1/dagger_0_bf5d0c7a \
      --out out/pen_bc_probes/anatomy.json

Prints one line per result and writes them to --out (JSON).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
import make_pen_demos as pen  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pen_bc_sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import envs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import mppi  # pylint: disable=g-import-not-at-top,wrong-import-position

PROBES = ('anatomy', 'label_noise', 'ensemble', 'self_imitation',
          'prev_action', 'unfiltered', 'low_noise_labels')
# Env seeds of the probes' own episodes, disjoint from make_pen_demos' ones.
SELF_IMITATION_SEED_OFFSET = 4_000_000
LABEL_NOISE_SEED_OFFSET = 5_000_000
LOW_NOISE_SEED_OFFSET = 6_000_000
PLANNER_SEED_OFFSET = 7_000_000


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('probe', choices=PROBES)
  parser.add_argument('--planner_dir', required=True)
  parser.add_argument('--dagger_dir', required=True)
  parser.add_argument('--num_demos', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0,
                      help='the make_pen_demos --seed of the cached episodes')
  parser.add_argument('--rounds', type=int, default=5,
                      help='DAgger rounds of labels in the training data')
  parser.add_argument('--policy', default=None, help='BC parameters (.npz); '
                      'default: DAGGER_DIR/bc_params_final.npz')
  parser.add_argument('--bc_steps', type=int, default=30_000)
  parser.add_argument('--bc_input_noise', type=float, default=0.1)
  parser.add_argument('--bc_seeds', type=cli.int_list, default='0,2',
                      help='seeds of the refits (ensemble: its members)')
  parser.add_argument('--num_states', type=int, default=40,
                      help='label_noise: visited states labelled twice')
  parser.add_argument('--num_rounds', type=int, default=4,
                      help='self_imitation / low_noise_labels rounds')
  parser.add_argument('--num_episodes', type=int, default=1500,
                      help='episodes per round (self_imitation: noisy '
                      'rollouts; low_noise_labels: labelled episodes)')
  parser.add_argument('--noise_stds', type=cli.float_list,
                      default='0.1,0.2,0.3',
                      help='self_imitation: action noise, cycled')
  parser.add_argument('--label_noise_std', type=float, default=0.1,
                      help='low_noise_labels: the planner\'s sample noise')
  parser.add_argument('--num_workers', type=int, default=2)
  parser.add_argument('--num_eval_episodes', type=int, default=50)
  parser.add_argument('--eval_seed_offset', type=int,
                      default=pen_bc_sweep.DEFAULT_EVAL_SEED_OFFSET)
  parser.add_argument('--out', required=True, help='JSON file of results')
  args = parser.parse_args(argv)
  if not (args.bc_seeds and args.noise_stds):
    parser.error('--bc_seeds and --noise_stds must not be empty')
  return args


def training_episodes(args):
  """[(observations, executed actions, labels)]: demos, then DAgger labels."""
  demo_observations, demo_actions = pen_bc_sweep.load_demos(
      args.planner_dir, args.num_demos, args.seed)
  episodes = list(zip(demo_observations, demo_actions, demo_actions))
  for round_episodes in pen.load_dagger_rounds(args.dagger_dir, args.rounds):
    episodes.extend(round_episodes)
  return episodes


def fit(args, inputs, targets, seed):
  config = dataclasses.replace(bc.BCConfig(), num_steps=args.bc_steps,
                               input_noise=args.bc_input_noise)
  return bc.fit_bc(np.concatenate(inputs), np.concatenate(targets), config,
                   seed=seed, log_fn=lambda _: None)


def held_out_seeds(args):
  return [pen.EVAL_SEED_OFFSET + args.eval_seed_offset + j
          for j in range(args.num_eval_episodes)]


def score(env, policy, args, name) -> dict:
  result = pen.evaluate_policy(env, policy, held_out_seeds(args))
  print(f'{name}: success {100 * result["success_rate"]:.0f}% +- '
        f'{100 * result["standard_error"]:.1f} over {result["episodes"]} '
        'held-out targets', flush=True)
  return {'name': name, **result}


def previous_actions(actions, labels):
  """The action executed before each step (the step's own label at t=0,
  where the planner had no previous action and used its plan's first)."""
  return np.concatenate([labels[:1], actions[:-1]])


def unfiltered_labels(actions, labels, keep: float):
  """The plan[0] behind each label, where label = keep a_prev + (1 - keep)
  plan[0] (MPPIPlanner's executed-action filter)."""
  return (labels - keep * previous_actions(actions, labels)) / (1.0 - keep)


def anatomy(args, env, policy):
  rows = []
  for seed in held_out_seeds(args):
    e = pen.run_policy_episode(env, seed, policy)
    achieved, heights = e['goal_achieved'], e['observations'][1:, 26]
    reached = np.flatnonzero(achieved)
    dropped = np.flatnonzero(heights < mppi.DROP_HEIGHT)
    rows.append({'target_angle': e['target_angle'],
                 'held': int(achieved.sum()),
                 'success': bool(envs.episode_success(pen.ENV_NAME,
                                                      achieved)),
                 'first_achieved': int(reached[0]) if len(reached) else None,
                 'last_achieved': int(reached[-1]) if len(reached) else None,
                 'dropped_at': int(dropped[0]) if len(dropped) else None})
  results = []
  for label, count, _ in pen.by_angle([r['target_angle'] for r in rows],
                                      [r['success'] for r in rows]):
    low, high = map(float, label.split('-'))
    inside = [r for r in rows if low <= r['target_angle'] < high]
    reached = [r for r in inside if r['first_achieved'] is not None]
    summary = {
        'degrees': label, 'episodes': count,
        'succeeded': sum(r['success'] for r in inside),
        'reached_goal': len(reached),
        'dropped_pen': sum(r['dropped_at'] is not None for r in inside),
        'median_first_achieved': _median(r['first_achieved'] for r in reached),
        'median_last_achieved': _median(r['last_achieved'] for r in reached),
        'median_dropped_at': _median(r['dropped_at'] for r in reached
                                     if r['dropped_at'] is not None)}
    print(json.dumps(summary), flush=True)
    results.append(summary)
  return {'by_angle': results, 'episodes': rows}


def _median(values):
  values = list(values)
  return float(np.median(values)) if values else None


def label_noise(args, env, policy):
  rng = np.random.default_rng(0)
  first, second, actions = [], [], []
  for i in range(args.num_states):
    observation, _ = env.reset(seed=LABEL_NOISE_SEED_OFFSET + i)
    previous = None
    for _ in range(int(rng.integers(0, 60))):  # a state BC visits
      previous = np.clip(policy(observation), -1.0, 1.0)
      observation, *_ = env.step(previous)
    labels = []
    for k in range(2):
      planner = pen.make_planner(env, PLANNER_SEED_OFFSET + 100 * i + k,
                                 pen.DEFAULT_MPPI, pen.DEFAULT_COST)
      labeler = pen.PolicyGuidedLabeler(env, planner, policy)
      labels.append(labeler.act(env.unwrapped.data, previous))
    first.append(labels[0])
    second.append(labels[1])
    actions.append(np.clip(policy(observation), -1.0, 1.0))
  first, second, actions = map(np.array, (first, second, actions))
  noise = float(np.mean(np.sum(np.square(first - second), 1)) / 2)
  total = float(np.mean(np.sum(np.square(first - first.mean(0)), 1)))
  mean_correction = float(np.mean(np.sum(np.square(
      (first + second) / 2 - actions), 1)) - noise / 2)
  result = {'states': args.num_states, 'label_noise_variance': noise,
            'label_variance': total, 'noise_fraction': noise / total,
            'systematic_correction_squared': mean_correction}
  print(json.dumps(result), flush=True)
  return result


def main(argv=None):
  args = parse_args(argv)
  try:
    episodes = training_episodes(args)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  seeds = args.bc_seeds
  policy_file = args.policy or os.path.join(args.dagger_dir,
                                            'bc_params_final.npz')
  if not os.path.exists(policy_file):
    raise SystemExit(f'error: no BC parameters at {policy_file}; run '
                     'make_pen_demos.py with --final_bc_steps or pass --policy')
  params = dict(np.load(policy_file))
  env = envs.make_gymnasium_env(pen.ENV_NAME, seed=0)
  observations = [o for o, _, _ in episodes]
  labels = [l for _, _, l in episodes]
  start = time.time()
  if args.probe == 'anatomy':
    results = anatomy(args, env, bc.bc_policy(params))
  elif args.probe == 'label_noise':
    results = label_noise(args, env, bc.bc_policy(params))
  elif args.probe == 'ensemble':
    members = [bc.bc_policy(fit(args, observations, labels, s))
               for s in seeds]
    results = [score(env, p, args, f'seed {s}')
               for s, p in zip(seeds, members)]
    results.append(score(env, lambda o: np.mean([p(o) for p in members], 0),
                         args, f'mean of {len(members)} seeds'))
  elif args.probe == 'self_imitation':
    results = self_imitation(args, env, params, observations, labels)
  elif args.probe == 'prev_action':
    inputs = [np.concatenate([o, previous_actions(a, l)], 1)
              for o, a, l in episodes]
    results = [score_with_previous_action(
        env, bc.bc_policy(fit(args, inputs, labels, s)),
        labels[0].shape[1], args, f'seed {s}') for s in seeds]
  elif args.probe == 'unfiltered':
    raw = [unfiltered_labels(a, l, pen.DEFAULT_MPPI.action_filter)
           for _, a, l in episodes]
    results = [score(env, bc.bc_policy(fit(args, observations, raw, s)),
                     args, f'seed {s}') for s in seeds]
  else:
    results = low_noise_labels(args, env, params, observations, labels,
                               seeds)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'probe': args.probe, 'args': vars(args), 'results': results,
               'seconds': round(time.time() - start, 1)}, f, indent=2)


def score_with_previous_action(env, policy, act_dim, args, name) -> dict:
  """`score` for a policy of (observation, previous action); at the first
  step its previous action is its own guess from a zero one."""
  successes = []
  for seed in held_out_seeds(args):
    observation, _ = env.reset(seed=seed)
    previous, achieved = None, []
    for _ in range(envs.max_episode_steps(pen.ENV_NAME)):
      guess = np.zeros(act_dim) if previous is None else previous
      action = policy(np.concatenate([observation, guess]))
      if previous is None:
        action = policy(np.concatenate([observation, action]))
      previous = np.clip(action, -1.0, 1.0)
      observation, _, _, _, info = env.step(previous)
      achieved.append(info['goal_achieved'])
    successes.append(envs.episode_success(pen.ENV_NAME, np.array(achieved)))
  p, n = float(np.mean(successes)), len(successes)
  result = {'name': name, 'episodes': n, 'success_rate': p,
            'standard_error': float(np.sqrt(p * (1 - p) / n))}
  print(f'{name}: success {100 * p:.0f}% +- '
        f'{100 * result["standard_error"]:.1f} over {n} held-out targets',
        flush=True)
  return result


def self_imitation(args, env, params, observations, labels):
  rng = np.random.default_rng(0)
  stds = args.noise_stds
  observations, labels, results = list(observations), list(labels), []
  for round_index in range(1, args.num_rounds + 1):
    policy, successes = bc.bc_policy(params), 0
    for j in range(args.num_episodes):
      e = pen.run_policy_episode(
          env, SELF_IMITATION_SEED_OFFSET + 100_000 * round_index + j, policy,
          stds[j % len(stds)], rng)
      if envs.episode_success(pen.ENV_NAME, e['goal_achieved']):
        successes += 1
        observations.append(e['observations'][:-1])
        labels.append(e['actions'])
    params = fit(args, observations, labels, 0)
    results.append({'round': round_index, 'noisy_successes': successes,
                    **score(env, bc.bc_policy(params), args,
                            f'round {round_index} ({successes} of '
                            f'{args.num_episodes} noisy rollouts succeeded)')})
  return results


def low_noise_labels(args, env, params, observations, labels, seeds):
  config = dataclasses.replace(pen.DEFAULT_MPPI,
                               noise_std=args.label_noise_std)
  cache = os.path.join(args.dagger_dir, f'low_noise_{args.label_noise_std}')
  os.makedirs(cache, exist_ok=True)
  observations, labels, results = list(observations), list(labels), []
  for round_index in range(1, args.num_rounds + 1):
    jobs = [(os.path.join(cache, f'dagger_{round_index}_{j:04d}.npz'),
             LOW_NOISE_SEED_OFFSET + 1000 * round_index + j, params, 0.0,
             True, config, pen.DEFAULT_COST)
            for j in range(args.num_episodes)]
    for e in pen.map_in_order(pen.dagger_job, jobs, args.num_workers):
      observations.append(e['observations'][:-1])
      labels.append(e['labels'])
    for seed in seeds:
      fitted = fit(args, observations, labels, seed)
      results.append({'round': round_index, 'seed': seed, **score(
          env, bc.bc_policy(fitted), args,
          f'round {round_index}, seed {seed}')})
    params = fitted  # the last seed's fit labels the next round
  return results


if __name__ == '__main__':
  main()
