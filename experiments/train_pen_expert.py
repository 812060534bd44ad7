"""A better pen demonstrator: TD3+BC from a fine-tuned IQL run's policy.

Issue #7 wants a pen stand-in whose demos BC imitates to at least 50%
success. `make_pen_rl_demos.py` showed that BC imitates an RL policy of
the observation about as well as that policy succeeds, and IQL's own policy
plateaus near 36% on the stand-in from 100k to 500k online steps. This
script tries to train a stronger one, starting from that run's last
checkpoint (its policy mean, its online transitions and offline dataset):

  critic   --critic checkpoint: the run's IQL critic, kept fixed (binary
           reward); --critic dense_td3: a fresh twin critic (LayerNorm
           after each hidden layer, as RLPD's) trained by TD3 on
           AdroitHandPen-v1's dense reward, which is a function of the next
           observation and so can be relabelled on the run's data;
  actor    TD3+BC's loss (Fujimoto & Gu 2021) on the policy mean,
           -alpha * Q(s, pi(s)) / mean|Q| + mean_i (pi(s)_i - a_i)^2,
           after --critic_warmup critic-only updates;
  online   --online_steps env steps of pi + N(0, --exploration_noise^2),
           --updates_per_step updates each, on batches half from this
           script's own transitions and half from the run's (RLPD's
           symmetric sampling).

Every --eval_every updates the deterministic policy is scored on
--eval_episodes fresh targets (env seeds 2,001,000 + j: pen_bc_sweep.py's
selection targets, disjoint from the BC gate's), and the best policy is
written in BC's .npz format for `make_pen_rl_demos.py --policy_npz`.

  python experiments/train_pen_expert.py --policy_workdir out/rl_demo/pen_seed2 \\
      --out out/pen_expert --critic dense_td3 --online_steps 100000

Writes the curve (CSV), a JSON summary, the best policy and a PNG to --out.
"""

import argparse
import csv
import functools
import json
import os
import sys
import time

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import cli
import flax.linen as nn
import jax
import jax.numpy as jnp
import make_pen_demos as pen
import make_pen_rl_demos as rl_demos
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import optax

from iql_acme import envs
from iql_acme import networks as networks_lib
from iql_acme import program
from iql_acme import run_setup
from iql_acme import training
from iql_acme.standin import bc
from iql_acme.standin import mppi
# pylint: enable=g-import-not-at-top,wrong-import-position

SELECTION_SEED_OFFSET = 2_001_000  # pen_bc_sweep.py's held-out targets
TRAIN_SEED_OFFSET = 4_000_000      # this script's own training episodes

def add_td3_flags(parser):
  """TD3's settings (Fujimoto et al. 2018), shared with train_hand_expert."""
  parser.add_argument('--learning_rate', type=float, default=3e-4)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--reward_scale', type=float, default=0.1,
                      help='times the dense reward')
  parser.add_argument('--discount', type=float, default=0.99)
  parser.add_argument('--policy_delay', type=int, default=2)
  parser.add_argument('--target_noise', type=float, default=0.2)
  parser.add_argument('--target_noise_clip', type=float, default=0.5)
  parser.add_argument('--target_rate', type=float, default=0.005)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--policy_workdir', required=True,
                      help='--workdir of a pen-binary-v0 run_finetune.py run')
  parser.add_argument('--dataset', default=None,
                      help='its offline dataset (default: the embedded one)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--critic', choices=('checkpoint', 'dense_td3'),
                      default='dense_td3')
  parser.add_argument('--alpha', type=float, default=2.5,
                      help='weight of the normalised Q term of the actor loss')
  parser.add_argument('--updates', type=int, default=None,
                      help='offline only (--online_steps 0): updates to run')
  parser.add_argument('--online_steps', type=int, default=100_000)
  parser.add_argument('--updates_per_step', type=int, default=1)
  parser.add_argument('--exploration_noise', type=float, default=0.1)
  parser.add_argument('--critic_warmup', type=int, default=10_000)
  parser.add_argument('--offline_fraction', type=float, default=0.25,
                      help='share of the run\'s data drawn from its offline '
                      'dataset (the rest from its online transitions)')
  add_td3_flags(parser)
  parser.add_argument('--eval_every', type=int, default=10_000)
  parser.add_argument('--eval_episodes', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if args.updates is None:
    args.updates = args.critic_warmup + 10_000
  cli.require_at_least(parser, args, ('updates_per_step', 'eval_every',
                                      'eval_episodes', 'batch_size',
                                      'policy_delay', 'updates'))
  if args.online_steps < 0 or args.critic_warmup < 0:
    parser.error('--online_steps and --critic_warmup must be >= 0')
  if not 0.0 <= args.offline_fraction <= 1.0:
    parser.error('--offline_fraction must be in [0, 1], got '
                 f'{args.offline_fraction}')
  if args.critic == 'checkpoint' and args.online_steps:
    parser.error('--critic checkpoint keeps the binary-reward critic fixed: '
                 'use it with --online_steps 0')
  if not os.path.isdir(args.policy_workdir):
    parser.error(f'--policy_workdir {args.policy_workdir} is not a folder: '
                 'pass the --workdir of a pen-binary-v0 run_finetune.py run')
  return args


def dense_reward(next_observations, scale):
  """AdroitHandPen-v1's dense reward of each step, from its next observation,
  times `scale` (float32, one per row)."""
  return (scale * mppi.pen_dense_reward_from_obs(
      np.atleast_2d(next_observations))).astype(np.float32)


class LayerNormTwinQ(nn.Module):
  """Two Q(s, a) MLPs with LayerNorm after each hidden layer (RLPD)."""
  hidden_dims: tuple = (256, 256)

  @nn.compact
  def __call__(self, observation, action):
    qs = []
    for _ in range(2):
      x = jnp.concatenate([observation, action], axis=-1)
      for width in self.hidden_dims:
        x = nn.relu(nn.LayerNorm()(nn.Dense(width)(x)))
      qs.append(nn.Dense(1)(x)[..., 0])
    return tuple(qs)


class Buffer:
  """A pool of transitions (dense rewards) that batches are drawn from."""

  def __init__(self, fields, size):
    self.fields, self.size = fields, size

  @classmethod
  def empty(cls, capacity, obs_dim, act_dim):
    return cls({'observations': np.zeros((capacity, obs_dim), np.float32),
                'actions': np.zeros((capacity, act_dim), np.float32),
                'rewards': np.zeros(capacity, np.float32),
                'discounts': np.zeros(capacity, np.float32),
                'next_observations': np.zeros((capacity, obs_dim),
                                              np.float32)}, 0)

  @classmethod
  def relabelled(cls, transitions, reward_scale):
    """A run's transitions with the dense reward in place of the binary."""
    return cls({'observations': transitions.observations,
                'actions': transitions.actions,
                'rewards': dense_reward(transitions.next_observations,
                                        reward_scale),
                'discounts': transitions.discounts,
                'next_observations': transitions.next_observations},
               transitions.size)

  def add(self, **row):
    for k, v in row.items():
      self.fields[k][self.size] = v
    self.size += 1

  def sample(self, rng, n):
    index = rng.integers(0, self.size, n)
    return {k: v[index] for k, v in self.fields.items()}


def batch_from(rng, parts):
  """Concatenates draws from each (buffer, rows) of `parts` with rows > 0."""
  draws = [buffer.sample(rng, n) for buffer, n in parts if n]
  return {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}


def make_update(policy_net, critic_net, optimizer, args, train_critic):
  """One jitted TD3(+BC) step; with train_critic False the critic is fixed."""
  def critic_loss(critic_params, target, batch, key):
    next_mean, _ = policy_net.apply(target['policy'],
                                    batch['next_observations'])
    noise = jnp.clip(args.target_noise * jax.random.normal(
        key, next_mean.shape), -args.target_noise_clip, args.target_noise_clip)
    next_q = jnp.minimum(*critic_net.apply(
        target['critic'], batch['next_observations'],
        jnp.clip(next_mean + noise, -1.0, 1.0)))
    y = jax.lax.stop_gradient(batch['rewards'] + args.discount *
                              batch['discounts'] * next_q)
    q1, q2 = critic_net.apply(critic_params, batch['observations'],
                              batch['actions'])
    return jnp.mean(jnp.square(q1 - y) + jnp.square(q2 - y)), jnp.mean(q1)

  def actor_loss(policy_params, critic_params, batch):
    mean, _ = policy_net.apply(policy_params, batch['observations'])
    q = jnp.minimum(*critic_net.apply(critic_params, batch['observations'],
                                      mean))
    lam = args.alpha / jax.lax.stop_gradient(jnp.mean(jnp.abs(q)) + 1e-6)
    bc_mse = jnp.mean(jnp.square(mean - batch['actions']))
    return -lam * jnp.mean(q) + bc_mse, (bc_mse, jnp.mean(q))

  @functools.partial(jax.jit, static_argnums=(4,))
  def update(params, opt_states, batch, key, update_actor):
    params, opt_states = dict(params), dict(opt_states)
    metrics = {}
    if train_critic:
      (loss, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(
          params['critic'], params['target'], batch, key)
      updates, opt_states['critic'] = optimizer.update(
          grads, opt_states['critic'])
      params['critic'] = optax.apply_updates(params['critic'], updates)
      metrics.update(critic_loss=loss, q_data=q)
    if update_actor:
      grads, (bc_mse, q_pi) = jax.grad(actor_loss, has_aux=True)(
          params['policy'], params['critic'], batch)
      updates, opt_states['policy'] = optimizer.update(
          grads, opt_states['policy'])
      params['policy'] = optax.apply_updates(params['policy'], updates)
      metrics.update(bc_mse=bc_mse, q_pi=q_pi)
    if train_critic:
      params['target'] = {
          part: training.polyak_update(params['target'][part], params[part],
                                       args.target_rate)
          for part in ('critic', 'policy')}
    return params, opt_states, metrics
  return update


def load_run(workdir):
  """(TrainingState of the run's last checkpoint, its online transitions)."""
  try:
    state, path = program.load_last_checkpoint(workdir)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from e
  online_file = os.path.join(path, program.ONLINE_FILE)
  if not os.path.exists(online_file):
    raise SystemExit(f'error: {workdir} holds no online transitions '
                     f'({online_file}); pass the --workdir of a '
                     'run_finetune.py run that fine-tuned online')
  online, _ = program.load_online_transitions(online_file)
  return state, online


def as_numpy_policy(policy_params):
  return bc.bc_policy(rl_demos.iql_policy_as_bc(policy_params))


class Trainer:
  """The actor, critic, their targets and optimisers, and the update."""

  def __init__(self, args, state, networks):
    self.args = args
    self.optimizer = optax.adam(args.learning_rate)
    key = jax.random.PRNGKey(args.seed)
    self.key, init_key = jax.random.split(key)
    dense = args.critic == 'dense_td3'
    critic_net = LayerNormTwinQ() if dense else networks.critic
    critic = (critic_net.init(init_key, networks.dummy_observation,
                              networks.dummy_action)
              if dense else state.critic_params)
    self.params = {'policy': state.policy_params, 'critic': critic,
                   'target': {'policy': state.policy_params, 'critic': critic}}
    self.opt_states = {'policy': self.optimizer.init(state.policy_params),
                       'critic': self.optimizer.init(critic)}
    self.update_fn = make_update(networks.policy, critic_net, self.optimizer,
                                 args, train_critic=dense)
    self.updates = 0
    self.total_updates = (args.critic_warmup + args.online_steps *
                          args.updates_per_step if args.online_steps
                          else args.updates)
    self.metrics = {}

  def update(self, batch):
    self.updates += 1
    self.key, key = jax.random.split(self.key)
    update_actor = (self.updates > self.args.critic_warmup and
                    self.updates % self.args.policy_delay == 0)
    self.params, self.opt_states, metrics = self.update_fn(
        self.params, self.opt_states, batch, key, update_actor)
    self.metrics.update(metrics)


def evaluate(trainer, env, seeds, rows, best, env_steps, start):
  result = pen.evaluate_policy(env, as_numpy_policy(trainer.params['policy']),
                               seeds)
  row = {'updates': trainer.updates, 'env_steps': env_steps,
         'success_rate': result['success_rate'],
         'standard_error': result['standard_error'],
         'mean_steps_achieved': result['mean_steps_achieved'],
         **{k: float(v) for k, v in trainer.metrics.items()}}
  rows.append(row)
  elapsed = time.time() - start
  rate = trainer.updates / max(elapsed, 1e-9)
  eta = (f'{(trainer.total_updates - trainer.updates) / rate:.0f} s'
         if trainer.updates else '-')
  print(f'updates {trainer.updates}/{trainer.total_updates} env steps '
        f'{env_steps}: success '
        f'{row["success_rate"]:.2f} +- {row["standard_error"]:.2f} over '
        f'{len(seeds)} targets; ' + ' '.join(
            f'{k} {float(v):.4g}' for k, v in trainer.metrics.items()) +
        f' ({elapsed:.0f} s, {rate:.0f} updates/s, ETA {eta})',
        flush=True)
  if best is None or row['success_rate'] > best[0]:
    best = (row['success_rate'], dict(row), trainer.params['policy'])
  return best


def train(args, trainer, run_data, env, seeds):
  """Critic warm-up on the run's data, then online steps (or more updates)."""
  rng = np.random.default_rng(args.seed)
  online_run, offline_run = run_data
  rows, start = [], time.time()
  best = evaluate(trainer, env, seeds, rows, None, 0, start)

  def run_parts(n):  # n rows of the run's own data
    k = int(round(n * args.offline_fraction))
    return [(online_run, n - k), (offline_run, k)]

  offline_updates = args.critic_warmup if args.online_steps else args.updates
  for _ in range(offline_updates):
    trainer.update(batch_from(rng, run_parts(args.batch_size)))
    if trainer.updates % args.eval_every == 0:
      best = evaluate(trainer, env, seeds, rows, best, 0, start)
  if not args.online_steps:
    return rows, best
  obs_dim = online_run.fields['observations'].shape[1]
  act_dim = online_run.fields['actions'].shape[1]
  fresh = Buffer.empty(args.online_steps, obs_dim, act_dim)
  train_env = envs.make_gymnasium_env(pen.ENV_NAME, seed=TRAIN_SEED_OFFSET)
  episode, observation = 0, train_env.reset(seed=TRAIN_SEED_OFFSET)[0]
  policy = as_numpy_policy(trainer.params['policy'])
  half = args.batch_size // 2
  for step in range(1, args.online_steps + 1):
    action = np.clip(policy(observation) + rng.normal(
        0.0, args.exploration_noise, act_dim), -1.0, 1.0)
    next_observation, _, _, truncated, _ = train_env.step(action)
    fresh.add(observations=observation, actions=action,
              rewards=dense_reward(next_observation, args.reward_scale)[0],
              discounts=1.0, next_observations=next_observation)
    observation = next_observation
    if truncated:  # 100 steps: a new target, and the actor's new policy.
      episode += 1
      observation = train_env.reset(seed=TRAIN_SEED_OFFSET + episode)[0]
      policy = as_numpy_policy(trainer.params['policy'])
    for _ in range(args.updates_per_step):
      trainer.update(batch_from(
          rng, [(fresh, args.batch_size - half)] + run_parts(half)))
      if trainer.updates % args.eval_every == 0:
        best = evaluate(trainer, env, seeds, rows, best, step, start)
  return rows, best


def plot_curve(file, rows, args):
  """Success (+-1 s.e.) against updates; the warm-up's end marked."""
  updates = np.array([r['updates'] for r in rows])
  rate = 100 * np.array([r['success_rate'] for r in rows])
  se = 100 * np.array([r['standard_error'] for r in rows])
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(updates, rate, marker='o', label=f'{args.critic}, alpha {args.alpha}')
  ax.fill_between(updates, rate - se, rate + se, alpha=0.2)
  if args.critic_warmup:
    ax.axvline(args.critic_warmup, color='gray', linestyle='--',
               label='critic warm-up ends')
  ax.set_xlabel('updates' + (f' ({args.updates_per_step} per env step after '
                             'the warm-up)' if args.online_steps else ''))
  ax.set_ylabel(f'success rate, % ({args.eval_episodes} targets)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(file, dpi=100)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  state, online = load_run(args.policy_workdir)
  offline, _ = run_setup.load_offline_dataset(
      run_setup.resolve_dataset_source(pen.ENV_NAME, args.dataset),
      'hand_finetune', online.observations.shape[1], online.actions.shape[1])
  run_data = (Buffer.relabelled(online, args.reward_scale),
              Buffer.relabelled(offline, args.reward_scale))
  networks = networks_lib.make_networks(
      networks_lib.spec_from_dims(online.observations.shape[1],
                                  online.actions.shape[1]),
      run_setup.make_config(pen.ENV_NAME))
  env = envs.make_gymnasium_env(pen.ENV_NAME, seed=SELECTION_SEED_OFFSET)
  seeds = [SELECTION_SEED_OFFSET + j for j in range(args.eval_episodes)]
  trainer = Trainer(args, state, networks)
  rows, (best_rate, best_row, best_params) = train(args, trainer, run_data,
                                                   env, seeds)
  with open(os.path.join(args.out, 'curve.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
    writer.writeheader()
    writer.writerows(rows)
  np.savez(os.path.join(args.out, 'best_policy.npz'),
           **rl_demos.iql_policy_as_bc(best_params))
  summary = {'policy_workdir': args.policy_workdir,
             'learner_steps': int(state.steps), 'args': vars(args),
             'start': rows[0], 'best': best_row, 'end': rows[-1],
             'best_success_rate': best_rate}
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  plot_curve(os.path.join(args.out, 'curve.png'), rows, args)
  print(f'best success {best_rate:.2f} at {best_row["updates"]} updates '
        f'({best_row["env_steps"]} env steps); start '
        f'{rows[0]["success_rate"]:.2f}; wrote {args.out}/best_policy.npz')


if __name__ == '__main__':
  main()
