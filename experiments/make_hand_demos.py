"""Generates STAND-IN door-binary-v0 / relocate-binary-v0 data in AWAC's layout.

Not the published AWAC data. The demonstrator is MPPI planning with the
simulator itself (`iql_acme.standin.mppi`, smoothed as for pen) on a cost
shaped from mj_envs' dense reward (`iql_acme.standin.hand_costs`):
  1. planner episodes from env seeds --seed + i (each cached in --work_dir
     as it finishes) until --num_demos succeed (goal held > 25 of 200
     steps): `{task}2_sparse.npy`;
  2. BC (2x256 MLP) on those demos alone, one fit per --bc_seeds entry,
     each scored noise-free on --num_eval_episodes fresh targets (env seeds
     --seed + 2,000,000 + j): issue #7's gate is their mean success >= 0.5;
     With --dagger_rounds R, BC is refitted R times first: in round r the
     current BC policy acts (noise-free) from env seeds --seed + 3,000,000
     + 1000 r + j and the planner, run alongside from its own warm-started
     plan, labels every state it visits (DAgger); the gate's fits then
     train on demos + labels;
  3. if BC passes --gate, --num_bc_episodes rollouts of the first fit with
     Gaussian action noise (std cycled through --bc_noise_stds), env seeds
     --seed + 1,000,000 + j: `{task}_bc_sparse4.npy`; and `meta.json`.

  python experiments/make_hand_demos.py --env door-binary-v0 \\
      --out out/door-binary-v0 --work_dir out/door_standin --num_demos 50

Deterministic given --seed, whatever --num_workers.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cli
import make_pen_demos as pen
import numpy as np
from tqdm import tqdm

from iql_acme import envs
from iql_acme.standin import awac_format
from iql_acme.standin import bc
from iql_acme.standin import hand_costs
from iql_acme.standin import mppi
# pylint: enable=g-import-not-at-top,wrong-import-position

TASKS = ('door-binary-v0', 'relocate-binary-v0')
# The pen demonstrator's settings (make_pen_demos.DEFAULT_MPPI) with half the
# samples: door episodes are twice as long.
DEFAULT_MPPI = dataclasses.replace(pen.DEFAULT_MPPI, num_samples=64)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--env', required=True, choices=TASKS)
  parser.add_argument('--out', required=True, help='folder for the .npy files')
  parser.add_argument('--work_dir', required=True,
                      help='episode cache, CSVs and the BC parameters')
  parser.add_argument('--policy_npz', default=None,
                      help='demonstrate with this deterministic policy in BC\'s '
                      '.npz format (e.g. a DAgger-fitted bc_params.npz this '
                      'script wrote) instead of the planner')
  parser.add_argument('--num_demos', type=int, default=25)
  parser.add_argument('--max_episodes', type=int, default=None,
                      help='cap on planner episodes (default 2 x num_demos)')
  parser.add_argument('--num_workers', type=int, default=2,
                      help='processes running planner episodes (the output '
                      'does not depend on it)')
  parser.add_argument('--num_samples', type=int,
                      default=DEFAULT_MPPI.num_samples)
  parser.add_argument('--horizon', type=int, default=DEFAULT_MPPI.horizon)
  parser.add_argument('--dagger_rounds', type=int, default=0)
  parser.add_argument('--dagger_episodes', type=int, default=20,
                      help='BC episodes labelled by the planner per round')
  parser.add_argument('--bc_steps', type=int, default=30_000)
  parser.add_argument('--bc_input_noise', type=float, default=0.1)
  parser.add_argument('--bc_seeds', type=cli.int_list, default='0,1,2')
  parser.add_argument('--num_eval_episodes', type=int, default=50)
  parser.add_argument('--gate', type=float, default=pen.ACCEPTANCE_SUCCESS_RATE)
  parser.add_argument('--num_bc_episodes', type=int, default=100)
  parser.add_argument('--bc_noise_stds', type=cli.float_list,
                      default='0.1,0.2,0.3,0.5')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  cli.require_at_least(parser, args, ('num_demos', 'num_workers',
                                      'num_samples', 'horizon', 'bc_steps',
                                      'num_eval_episodes'))
  if args.max_episodes is None:
    args.max_episodes = 2 * args.num_demos
  if args.max_episodes < args.num_demos:
    parser.error(f'--max_episodes ({args.max_episodes}) must be at least '
                 f'--num_demos ({args.num_demos})')
  for flag in ('num_bc_episodes', 'bc_input_noise', 'dagger_rounds',
               'dagger_episodes'):
    if getattr(args, flag) < 0:
      parser.error(f'--{flag} must be >= 0, got {getattr(args, flag)}')
  if args.policy_npz and not os.path.isfile(args.policy_npz):
    parser.error(f'--policy_npz {args.policy_npz} is not a file: pass a '
                 'bc_params.npz or demonstrator_policy.npz this script wrote')
  if args.policy_npz and args.dagger_rounds:
    parser.error('--dagger_rounds needs the planner: leave out --policy_npz')
  if not (args.bc_seeds and args.bc_noise_stds):
    parser.error('--bc_seeds and --bc_noise_stds must not be empty')
  return args


def task_prefix(env_name: str) -> str:
  return env_name.split('-', 1)[0]


def run_episode(env, env_name: str, episode_seed: int, act) -> dict:
  """One full episode; `act(observation, unwrapped)` picks each action."""
  observation, _ = env.reset(seed=episode_seed)
  unwrapped = env.unwrapped
  observations, actions, achieved, rewards = [observation], [], [], []
  truncated = False
  for _ in range(envs.max_episode_steps(env_name)):
    action = np.clip(act(observation, unwrapped), -1.0, 1.0)
    observation, _, _, truncated, info = env.step(action)
    observations.append(observation)
    actions.append(action)
    achieved.append(info['goal_achieved'])
    rewards.append(hand_costs.dense_reward(env_name, unwrapped))
  return {'observations': np.array(observations, np.float32),
          'actions': np.array(actions, np.float32),
          'goal_achieved': np.array(achieved, bool),
          'env_rewards': np.array(rewards, np.float32),
          'truncated': bool(truncated)}


_WORKER_ENVS = {}


def planner_job(job) -> dict:
  """Planner episode (file, env name, seed, MPPI config), cached in `file`."""
  file, env_name, seed, mppi_config = job
  if os.path.exists(file):
    return pen.load_npz(file)
  if env_name not in _WORKER_ENVS:
    _WORKER_ENVS[env_name] = envs.make_gymnasium_env(env_name, seed=0)
  env = _WORKER_ENVS[env_name]
  state = {}

  def act(observation, unwrapped):
    del observation
    if 'planner' not in state:  # After reset: the cost reads the new layout.
      state['planner'] = mppi.MPPIPlanner(
          unwrapped.model, hand_costs.make_cost(env_name, unwrapped.model),
          unwrapped.act_mean, unwrapped.act_rng, unwrapped.frame_skip,
          mppi_config, seed=seed)
    return state['planner'].act(unwrapped.data)

  start = time.time()
  episode = run_episode(env, env_name, seed, act)
  episode['wall_seconds'] = np.float64(time.time() - start)
  pen.save_npz_atomically(file, **episode)
  return episode


def dagger_job(job) -> dict:
  """A BC episode labelled by the planner (file, env, seed, MPPI, BC)."""
  file, env_name, seed, mppi_config, bc_params = job
  if os.path.exists(file):
    return pen.load_npz(file)
  if env_name not in _WORKER_ENVS:
    _WORKER_ENVS[env_name] = envs.make_gymnasium_env(env_name, seed=0)
  policy = bc.bc_policy(bc_params)
  state = {'labels': [], 'previous': None}

  def act(observation, unwrapped):
    if 'planner' not in state:
      state['planner'] = mppi.MPPIPlanner(
          unwrapped.model, hand_costs.make_cost(env_name, unwrapped.model),
          unwrapped.act_mean, unwrapped.act_rng, unwrapped.frame_skip,
          mppi_config, seed=seed)
    state['labels'].append(
        state['planner'].act(unwrapped.data, state['previous']))
    state['previous'] = np.clip(policy(observation), -1.0, 1.0)
    return state['previous']

  episode = run_episode(_WORKER_ENVS[env_name], env_name, seed, act)
  episode['labels'] = np.array(state['labels'], np.float32)
  pen.save_npz_atomically(file, **episode)
  return episode


def episode_cache(args, mppi_config) -> str:
  settings = json.dumps([args.env, dataclasses.asdict(mppi_config)],
                        sort_keys=True)
  cache = os.path.join(args.work_dir, 'planner_episodes_' +
                       hashlib.sha1(settings.encode()).hexdigest()[:8])
  os.makedirs(cache, exist_ok=True)
  return cache


def dagger(args, demos, mppi_config, bc_config):
  """DAgger rounds; returns (inputs, labels, per-round history)."""
  inputs = [e['observations'][:-1] for e in demos]
  labels = [e['actions'] for e in demos]
  # Labelled episodes depend on every earlier fit: key them by its settings.
  settings = json.dumps([args.num_demos, args.bc_seeds[0],
                         dataclasses.asdict(bc_config)], sort_keys=True)
  cache = os.path.join(episode_cache(args, mppi_config), 'dagger_' +
                       hashlib.sha1(settings.encode()).hexdigest()[:8])
  os.makedirs(cache, exist_ok=True)
  history = []
  for round_index in range(1, args.dagger_rounds + 1):
    params = bc.fit_bc(np.concatenate(inputs), np.concatenate(labels),
                       bc_config, seed=args.bc_seeds[0], log_fn=lambda _: None)
    jobs = [(os.path.join(cache, f'round{round_index}_{j:04d}.npz'), args.env,
             args.seed + pen.DAGGER_SEED_OFFSET + 1000 * round_index + j,
             mppi_config, params) for j in range(args.dagger_episodes)]
    successes = []
    for episode in tqdm(pen.map_in_order(dagger_job, jobs, args.num_workers),
                        total=len(jobs), desc=f'dagger round {round_index}',
                        unit='ep', file=sys.stdout, dynamic_ncols=True):
      inputs.append(episode['observations'][:-1])
      labels.append(episode['labels'])
      successes.append(envs.episode_success(args.env,
                                            episode['goal_achieved']))
    history.append({'round': round_index,
                    'bc_success_on_labelled_episodes': float(np.mean(successes)),
                    'labelled_states': int(sum(len(l) for l in labels))})
    print(f'DAgger round {round_index}: the BC policy succeeded in '
          f'{np.mean(successes):.2f} of its {len(jobs)} labelled episodes',
          flush=True)
  return np.concatenate(inputs), np.concatenate(labels), history


def policy_job(job) -> dict:
  """An episode of a deterministic policy (env name, seed, BC params)."""
  env_name, seed, params = job
  if env_name not in _WORKER_ENVS:
    _WORKER_ENVS[env_name] = envs.make_gymnasium_env(env_name, seed=0)
  policy = bc.bc_policy(params)
  start = time.time()
  episode = run_episode(_WORKER_ENVS[env_name], env_name, seed,
                        lambda o, _: policy(o))
  episode['wall_seconds'] = np.float64(time.time() - start)
  return episode


def collect_demos(args, mppi_config):
  """Demonstrator episodes from seeds --seed + i until --num_demos succeed."""
  if args.policy_npz:
    params = dict(np.load(args.policy_npz))
    job_fn, workers = policy_job, 1  # Fast: no planning.
    jobs = [(args.env, args.seed + i, params)
            for i in range(args.max_episodes)]
  else:
    cache = episode_cache(args, mppi_config)
    job_fn, workers = planner_job, args.num_workers
    jobs = [(os.path.join(cache, f'seed_{args.seed + i}.npz'), args.env,
             args.seed + i, mppi_config) for i in range(args.max_episodes)]
  demos, rows = [], []
  bar = tqdm(total=args.num_demos, desc=f'{args.env} demos', unit='demo',
             file=sys.stdout, dynamic_ncols=True)
  for index, episode in enumerate(pen.map_in_order(job_fn, jobs, workers)):
    success = envs.episode_success(args.env, episode['goal_achieved'])
    rows.append({'index': index, 'held': int(episode['goal_achieved'].sum()),
                 'success': int(success),
                 'wall_seconds': round(float(episode['wall_seconds']), 1)})
    bar.set_postfix(episodes=len(rows))
    if success:
      demos.append(episode)
      bar.update()
      if len(demos) == args.num_demos:
        break
  bar.close()
  return demos, rows


def evaluate_policy(env, env_name: str, policy, seeds) -> dict:
  successes = [envs.episode_success(env_name, run_episode(
      env, env_name, seed, lambda o, _: policy(o))['goal_achieved'])
               for seed in seeds]
  p = float(np.mean(successes))
  return {'episodes': len(seeds), 'success_rate': p,
          'standard_error': float(np.sqrt(p * (1 - p) / len(seeds)))}


def rollout_bc(env, env_name: str, policy, args):
  rng = np.random.default_rng(args.seed)
  paths, rows, actions = [], [], []
  for index in tqdm(range(args.num_bc_episodes), desc='bc rollouts',
                    unit='ep', file=sys.stdout, dynamic_ncols=True):
    noise_std = args.bc_noise_stds[index % len(args.bc_noise_stds)]
    episode = run_episode(
        env, env_name, args.seed + pen.BC_SEED_OFFSET + index,
        lambda o, _, s=noise_std: policy(o) + rng.normal(0.0, s, env.action_space.shape))
    obs, achieved = episode['observations'], episode['goal_achieved']
    paths.append(awac_format.bc_path(obs[:-1], episode['actions'], obs[1:],
                                     achieved, episode['env_rewards'],
                                     truncated=episode['truncated']))
    actions.append(episode['actions'])
    rows.append({'index': index, 'noise_std': noise_std,
                 'held': int(achieved.sum()),
                 'success': int(envs.episode_success(env_name, achieved))})
  return paths, rows, actions


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.work_dir, exist_ok=True)
  start = time.time()
  prefix = task_prefix(args.env)
  demo_file, bc_file = f'{prefix}2_sparse.npy', f'{prefix}_bc_sparse4.npy'
  mppi_config = dataclasses.replace(DEFAULT_MPPI, num_samples=args.num_samples,
                                    horizon=args.horizon)
  demos, demo_rows = collect_demos(args, mppi_config)
  pen.write_csv(os.path.join(args.work_dir, 'demonstrator_episodes.csv'),
                demo_rows)
  planner_rate = float(np.mean([r['success'] for r in demo_rows]))
  if args.policy_npz:  # Kept beside the data: it regenerates them.
    np.savez(os.path.join(args.out, 'demonstrator_policy.npz'),
             **np.load(args.policy_npz))
  print(f'demonstrator: {len(demos)} successes in {len(demo_rows)} episodes '
        f'({planner_rate:.2f}), median '
        f'{np.median([r["wall_seconds"] for r in demo_rows]):.0f} s/episode',
        flush=True)
  if len(demos) < args.num_demos:
    raise SystemExit(f'error: the demonstrator succeeded in {len(demos)} of '
                     f'{len(demo_rows)} episodes, short of --num_demos '
                     f'{args.num_demos}; raise --max_episodes or lower '
                     '--num_demos')
  awac_format.save_paths(os.path.join(args.out, demo_file), [
      awac_format.demo_path(e['observations'][:-1], e['actions'],
                            e['observations'][1:], e['goal_achieved'])
      for e in demos])

  env = envs.make_gymnasium_env(args.env, seed=args.seed)
  eval_seeds = [args.seed + pen.EVAL_SEED_OFFSET + j
                for j in range(args.num_eval_episodes)]
  bc_config = dataclasses.replace(bc.BCConfig(), num_steps=args.bc_steps,
                                  input_noise=args.bc_input_noise)
  inputs, targets, dagger_history = dagger(args, demos, mppi_config,
                                           bc_config)
  trained_on = ('the demos alone' if not args.dagger_rounds else
                f'the demos and {args.dagger_rounds} DAgger rounds\' labels')
  params, fits, gate, passed = bc.gated_fits(
      inputs, targets, bc_config, args.bc_seeds,
      lambda policy: evaluate_policy(env, args.env, policy, eval_seeds),
      args.gate, trained_on, log_fn=lambda m: print(m, flush=True))
  np.savez(os.path.join(args.work_dir, 'bc_params.npz'), **params)

  bc_paths, bc_rows, bc_actions = [], [], []
  stale = os.path.join(args.out, bc_file)
  if passed and args.num_bc_episodes:
    bc_paths, bc_rows, bc_actions = rollout_bc(env, args.env,
                                               bc.bc_policy(params), args)
    awac_format.save_paths(stale, bc_paths)
    pen.write_csv(os.path.join(args.work_dir, 'bc_episodes.csv'), bc_rows)
  elif os.path.exists(stale):  # From an earlier run: not these demos' BC.
    os.remove(stale)
    print(f'removed {stale} of an earlier run')
  rollouts = pen.rollout_meta(args.out, bc_paths, bc_rows, bc_actions,
                              args.bc_noise_stds)
  rollouts['file_megabytes'] = {
      name: os.path.getsize(os.path.join(args.out, name)) / 2**20
      for name in (demo_file, bc_file)
      if os.path.exists(os.path.join(args.out, name))}
  meta = {
      'what': f'GENERATED stand-in for AWAC {args.env} data; not the '
              f'published {demo_file} / {bc_file}',
      'command': 'python experiments/make_hand_demos.py ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
      'seed': args.seed,
      'env_seeds': {'demos': f'{args.seed} + i',
                    'bc_rollouts': f'{args.seed + pen.BC_SEED_OFFSET} + j',
                    'bc_gate': f'{args.seed + pen.EVAL_SEED_OFFSET} + j'},
      'demonstrator': {'kind': ('deterministic MLP policy ' + args.policy_npz
                                if args.policy_npz else
                                'MPPI with the simulator'),
                       'mppi': (None if args.policy_npz else
                                dataclasses.asdict(mppi_config)),
                       'episodes': len(demo_rows), 'successes': len(demos),
                       'success_rate': planner_rate},
      'num_demos': len(demos),
      'demo_transitions': int(sum(len(e['actions']) for e in demos)),
      'demo_smoothness': pen.action_smoothness([e['actions'] for e in demos]),
      'bc': dataclasses.asdict(bc_config),
      'dagger': dagger_history,
      'bc_gate': {'trained_on': trained_on, 'bc': gate, 'each_fit': fits,
                  'passed': bool(passed),
                  # Issue #7's test is BC on the demos alone.
                  'meets_acceptance': bool(
                      not args.dagger_rounds and
                      gate['success_rate'] >= pen.ACCEPTANCE_SUCCESS_RATE)},
      **rollouts,
      'wall_seconds': round(time.time() - start, 1),
  }
  with open(os.path.join(args.out, 'meta.json'), 'w') as f:
    json.dump(meta, f, indent=2)
  print(f'wrote {demo_file}{", " + bc_file if bc_paths else ""} and '
        f'meta.json to {args.out} ({meta["wall_seconds"]} s)')


if __name__ == '__main__':
  main()
