"""A door/relocate demonstrator trained by RL: TD3+BC on the dense reward.

The pen's working recipe (`train_pen_expert.py`) for the tasks whose MPPI
demos BC cannot imitate (`make_hand_demos.py`). It starts from a BC policy
that `make_hand_demos.py` fitted (its `bc_params.npz`, e.g. after DAgger
rounds) and the planner's cached episodes (demos and DAgger-labelled BC
episodes, with mj_envs' dense reward of every step), and trains:

  critic   a fresh twin critic with LayerNorm (RLPD's), TD3 on the dense
           reward times --reward_scale, --critic_warmup critic-only updates
           on the cached episodes first;
  actor    TD3+BC's loss on BC's own network (inputs standardised as BC's);
  online   --online_steps env steps of pi + N(0, --exploration_noise^2), one
           update per step, batches half fresh and half the cached episodes.

Every --eval_every updates the deterministic policy is scored on
--eval_episodes selection targets (env seeds 2,001,000 + j, disjoint from
the BC gate's 2,000,000 + j); the best is written in BC's .npz format for
`make_hand_demos.py --policy_npz`.

  python experiments/train_hand_expert.py --env door-binary-v0 \\
      --bc_params out/door_standin/bc_params.npz --work_dir out/door_standin \\
      --out out/door_expert --online_steps 100000

Writes curve.csv, curve.png, summary.json and best_policy.npz to --out.
"""

import argparse
import glob
import json
import os
import sys
import time
import types

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cli
import jax.numpy as jnp
import make_hand_demos as hand
import make_pen_demos as pen
import numpy as np
import train_pen_expert as expert

from iql_acme import envs
from iql_acme.standin import bc
from iql_acme.standin import hand_costs
# pylint: enable=g-import-not-at-top,wrong-import-position

SELECTION_SEED_OFFSET = expert.SELECTION_SEED_OFFSET
TRAIN_SEED_OFFSET = expert.TRAIN_SEED_OFFSET


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--env', required=True, choices=hand.TASKS)
  parser.add_argument('--bc_params', required=True,
                      help='the starting policy: a bc_params.npz that '
                      'make_hand_demos.py wrote')
  parser.add_argument('--work_dir', required=True,
                      help='make_hand_demos.py\'s --work_dir: its cached '
                      'planner and DAgger episodes are the offline data')
  parser.add_argument('--out', required=True)
  parser.add_argument('--alpha', type=float, default=2.5)
  parser.add_argument('--online_steps', type=int, default=100_000)
  parser.add_argument('--critic_warmup', type=int, default=20_000)
  parser.add_argument('--exploration_noise', type=float, default=0.1)
  expert.add_td3_flags(parser)
  parser.add_argument('--eval_every', type=int, default=10_000)
  parser.add_argument('--eval_episodes', type=int, default=50)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  cli.require_at_least(parser, args, ('online_steps', 'eval_every',
                                      'eval_episodes', 'batch_size',
                                      'policy_delay'))
  if args.critic_warmup < 0:
    parser.error(f'--critic_warmup must be >= 0, got {args.critic_warmup}')
  if not os.path.isfile(args.bc_params):
    parser.error(f'--bc_params {args.bc_params} is not a file: pass the '
                 'bc_params.npz that make_hand_demos.py wrote')
  return args


class StandardisedMLP:
  """BC's policy as a trainable function: params are BC's layers only.

  The input standardisation (BC's obs_mean / obs_std) stays fixed;
  `apply` returns (mean action, None) as IQL's policy network does, so
  train_pen_expert's TD3+BC update takes it as is.
  """

  def __init__(self, bc_params):
    self.obs_mean = jnp.asarray(bc_params['obs_mean'])
    self.obs_std = jnp.asarray(bc_params['obs_std'])
    num_layers = sum(1 for k in bc_params if k.startswith('w'))
    self.initial_params = [
        {'w': jnp.asarray(bc_params[f'w{i}']),
         'b': jnp.asarray(bc_params[f'b{i}'])} for i in range(num_layers)]

  def apply(self, params, observations):
    x = (observations - self.obs_mean) / self.obs_std
    for layer in params[:-1]:
      x = jnp.maximum(x @ layer['w'] + layer['b'], 0.0)
    return jnp.tanh(x @ params[-1]['w'] + params[-1]['b']), None

  def as_bc(self, params) -> dict:
    """BC's .npz format (for bc.bc_policy and make_hand_demos)."""
    flat = {'obs_mean': np.asarray(self.obs_mean),
            'obs_std': np.asarray(self.obs_std)}
    for i, layer in enumerate(params):
      flat[f'w{i}'] = np.asarray(layer['w'])
      flat[f'b{i}'] = np.asarray(layer['b'])
    return flat


def cached_episodes(work_dir: str, env_name: str):
  """(Buffer of every episode make_hand_demos.py cached for `env_name`, with
  its dense rewards; how many episodes)."""
  files = sorted(glob.glob(os.path.join(
      work_dir, 'planner_episodes_*', '**', '*.npz'), recursive=True))
  episodes = []
  for file in files:
    with np.load(file) as episode:
      if 'env_rewards' in episode.files:
        episodes.append({k: episode[k] for k in ('observations', 'actions',
                                                 'env_rewards')})
  obs_dim = envs.make_gymnasium_env(env_name, 0).observation_space.shape[0]
  episodes = [e for e in episodes if e['observations'].shape[1] == obs_dim]
  if not episodes:
    raise SystemExit(f'error: no cached {env_name} episodes under {work_dir}; '
                     'run make_hand_demos.py with this --work_dir first')
  size = sum(len(e['actions']) for e in episodes)
  return expert.Buffer({
      'observations': np.concatenate([e['observations'][:-1]
                                      for e in episodes]),
      'actions': np.concatenate([e['actions'] for e in episodes]),
      'rewards': np.concatenate([e['env_rewards'] for e in episodes]),
      'discounts': np.ones(size, np.float32),
      'next_observations': np.concatenate([e['observations'][1:]
                                           for e in episodes])},
                       size), len(episodes)


def main(argv=None):
  args = parse_args(argv)
  args.updates_per_step, args.offline_fraction = 1, 0.0
  os.makedirs(args.out, exist_ok=True)
  offline, num_episodes = cached_episodes(args.work_dir, args.env)
  offline.fields['rewards'] = (args.reward_scale *
                               offline.fields['rewards']).astype(np.float32)
  print(f'{num_episodes} cached episodes, {offline.size} transitions',
        flush=True)
  policy_net = StandardisedMLP(dict(np.load(args.bc_params)))
  obs_dim = offline.fields['observations'].shape[1]
  act_dim = offline.fields['actions'].shape[1]
  networks = types.SimpleNamespace(
      policy=policy_net, critic=None,
      dummy_observation=jnp.zeros((1, obs_dim)),
      dummy_action=jnp.zeros((1, act_dim)))
  state = types.SimpleNamespace(policy_params=policy_net.initial_params,
                                critic_params=None, steps=0)
  args.critic = 'dense_td3'
  trainer = expert.Trainer(args, state, networks)
  eval_env = envs.make_gymnasium_env(args.env, seed=SELECTION_SEED_OFFSET)
  seeds = [SELECTION_SEED_OFFSET + j for j in range(args.eval_episodes)]
  rng = np.random.default_rng(args.seed)
  rows, start, best = [], time.time(), None

  def evaluate(env_steps):
    nonlocal best
    params = trainer.params['policy']
    result = hand.evaluate_policy(eval_env, args.env, bc.bc_policy(
        policy_net.as_bc(params)), seeds)
    rows.append({'updates': trainer.updates, 'env_steps': env_steps,
                 'success_rate': result['success_rate'],
                 'standard_error': result['standard_error'],
                 **{k: float(v) for k, v in trainer.metrics.items()}})
    elapsed = time.time() - start
    rate = trainer.updates / max(elapsed, 1e-9)
    eta = ((trainer.total_updates - trainer.updates) / rate if rate else 0)
    print(f'updates {trainer.updates}/{trainer.total_updates} env steps '
          f'{env_steps}: success {result["success_rate"]:.2f} +- '
          f'{result["standard_error"]:.2f} over {len(seeds)} targets; ' +
          ' '.join(f'{k} {float(v):.4g}' for k, v in trainer.metrics.items())
          + f' ({elapsed:.0f} s, {rate:.0f} updates/s, ETA {eta:.0f} s)',
          flush=True)
    if best is None or result['success_rate'] > best[0]:
      best = (result['success_rate'], dict(rows[-1]), params)

  evaluate(0)
  for _ in range(args.critic_warmup):
    trainer.update(offline.sample(rng, args.batch_size))
    if trainer.updates % args.eval_every == 0:
      evaluate(0)
  fresh = expert.Buffer.empty(args.online_steps, obs_dim, act_dim)
  env = envs.make_gymnasium_env(args.env, seed=TRAIN_SEED_OFFSET)
  episode, observation = 0, env.reset(seed=TRAIN_SEED_OFFSET)[0]
  policy = bc.bc_policy(policy_net.as_bc(trainer.params['policy']))
  half = args.batch_size // 2
  for step in range(1, args.online_steps + 1):
    action = np.clip(policy(observation) + rng.normal(
        0.0, args.exploration_noise, act_dim), -1.0, 1.0)
    next_observation, _, _, truncated, _ = env.step(action)
    reward = hand_costs.dense_reward(args.env, env.unwrapped)
    fresh.add(observations=observation, actions=action,
              rewards=args.reward_scale * reward, discounts=1.0,
              next_observations=next_observation)
    observation = next_observation
    if truncated:  # A new door, and the actor's new policy.
      episode += 1
      observation = env.reset(seed=TRAIN_SEED_OFFSET + episode)[0]
      policy = bc.bc_policy(policy_net.as_bc(trainer.params['policy']))
    trainer.update(expert.batch_from(
        rng, [(fresh, args.batch_size - half), (offline, half)]))
    if trainer.updates % args.eval_every == 0:
      evaluate(step)

  best_rate, best_row, best_params = best
  pen.write_csv(os.path.join(args.out, 'curve.csv'), [
      {k: r.get(k) for k in sorted({k for r in rows for k in r})}
      for r in rows])
  np.savez(os.path.join(args.out, 'best_policy.npz'),
           **policy_net.as_bc(best_params))
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump({'args': vars(args), 'cached_episodes': num_episodes,
               'start': rows[0], 'best': best_row, 'end': rows[-1],
               'best_success_rate': best_rate}, f, indent=2)
  expert.plot_curve(os.path.join(args.out, 'curve.png'), rows, args)
  print(f'best success {best_rate:.2f} at {best_row["updates"]} updates '
        f'({best_row["env_steps"]} env steps); start '
        f'{rows[0]["success_rate"]:.2f}; wrote {args.out}/best_policy.npz')


if __name__ == '__main__':
  main()
