"""Learner throughput: IQL gradient updates per second, pen-sized networks.

Imports only the IQL core (jax, flax, optax, numpy; no Acme, Reverb or
TensorFlow), so it runs on any JAX, e.g. current JAX on a GPU machine.

Networks as in the paper (2x256 ReLU MLPs), observation 45 and action 24
(pen), batch 256, a 100k-transition synthetic dataset on device. The
variants run in the same process, interleaved, each repeat timed after its own
warm-up (compilation excluded); the median over repeats is reported:

  scan     `training.make_offline_steps` (what `IQLLearner` runs offline):
           sampling and 100 updates in one jitted `lax.scan` call.
  single   the same with one update per call and the metrics fetched to the
           host after each (as `IQLLearner.step()` does for its logger).
  vmap_N   N independent seeds in one jitted call (`make_multi_seed_steps`:
           `jax.vmap` over the stacked states, or `lax.map` on a CPU backend,
           100 updates per call, one shared dataset), as
           `experiments/train_offline.py --seeds` runs them. Reported as seed-updates/s (N x updates/s of each seed), the
           per-seed rate, and the seed-updates/s ratio to `scan`.
  original the structure of the original JAX IQL code (ikostrikov/
           implicit_q_learning): numpy batch sampling on the host, one jitted
           update per call, twin Q as two separate MLPs, the target critic
           evaluated twice (V step and actor step) and V(s), V(s') in separate
           passes. It is written out below, independent of `iql_acme`.

FLOPs per update (analytic, matmuls only; a [m,k]x[k,n] matmul is 2mkn
FLOPs). Per sample, a dense layer k->n costs k*n multiply-adds forward; its
backward costs k*n for the weight gradient plus k*n for the input gradient,
except the first layer, whose input needs no gradient. With O=45, A=24, H=256:

  value  O->H->H->1     fwd  O*H + H*H + H        =  77,312 MACs
  critic (O+A)->H->H->1 fwd  (O+A)*H + H*H + H    =  83,456 MACs per head
  actor  O->H->H->A     fwd  O*H + H*H + H*A      =  83,200 MACs

  target critic fwd, 2 heads                2 * 83,456        = 166,912
  value fwd+bwd          77,312 + 77,312 + (H*H + H)          = 220,416
  V(s) with the new V, fwd (advantage)                        =  77,312
  V(s') with the new V, fwd (TD target)                       =  77,312
  actor fwd+bwd          83,200 + 83,200 + (H*H + H*A)        = 238,080
  critic fwd+bwd, 2 heads  2 * (83,456 + 83,456 + H*H + H)    = 465,408
                                                        total 1,245,440 MACs

so 2 * 1,245,440 * 256 = 0.638 GFLOP per update (`update_flops` computes it
from the sizes). Elementwise work (activations, Adam, Polyak) is left out.

What the learner does differently from the original structure (same math):
the twin Q heads are one ensemble network, so each layer of both heads is one
batched matmul (`networks.TwinQ`); bias gradients are computed as a product
with a matrix of ones instead of a column sum, which XLA:CPU lowers to a slow
tree reduction (`networks.add_bias`); the target critic runs once per update
and V(s), V(s') under the updated V in one pass; and `lax.scan` runs
sampling plus 100 updates per call (no host round trip in between).

XLA flags: none are set. Both this benchmark and the learner process use
XLA's CPU defaults (jaxlib 0.4.30 sends matmuls of at least 2^23
multiply-adds to oneDNN, smaller ones to Eigen).

Usage: python benchmarks/bench_learner.py [--repeats 7] [--updates 200]
                                         [--seeds 1,4,16] [--no_original]
The last line printed is a JSON object with the figures.
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, Sequence

# The repository root, for `python benchmarks/bench_learner.py` in a venv
# that has no .pth for it (e.g. .venv-core, or a fresh GPU machine).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from iql_acme import networks as iql_networks
from iql_acme import training
from iql_acme.config import IQLConfig
from iql_acme.types import Transitions
# pylint: enable=g-import-not-at-top,wrong-import-position

OBS_DIM = 45           # pen
ACT_DIM = 24
BATCH_SIZE = 256
HIDDEN_DIMS = (256, 256)
DATASET_SIZE = 100_000
SCAN_STEPS = 100       # updates per jitted call of the scan variant
DEFAULT_REPEATS = 7
DEFAULT_UPDATES = 200  # updates per timed repeat (a multiple of SCAN_STEPS)
WARMUP_UPDATES = 200
DEFAULT_SEED_COUNTS = '1,4,16'  # vmapped seeds per variant


def dense_macs(dims: Sequence[int]) -> Dict[str, int]:
  """Multiply-adds per sample of an MLP with layer sizes `dims`."""
  layers = list(zip(dims[:-1], dims[1:]))
  fwd = sum(k * n for k, n in layers)
  # Weight gradients of every layer, input gradients of all but the first.
  bwd = fwd + sum(k * n for k, n in layers[1:])
  return {'fwd': fwd, 'fwd_bwd': fwd + bwd}


def update_flops(obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=HIDDEN_DIMS,
                 batch_size=BATCH_SIZE) -> int:
  """Matmul FLOPs of one IQL update (see the module docstring)."""
  value = dense_macs([obs_dim, *hidden, 1])
  critic = dense_macs([obs_dim + act_dim, *hidden, 1])
  actor = dense_macs([obs_dim, *hidden, act_dim])
  macs = (2 * critic['fwd']           # target critic
          + value['fwd_bwd']          # value step
          + 2 * value['fwd']          # V(s), V(s') with the new V
          + actor['fwd_bwd']          # actor step
          + 2 * critic['fwd_bwd'])    # critic step, both heads
  return 2 * macs * batch_size


def synthetic_dataset(seed: int = 0, size: int = DATASET_SIZE) -> Transitions:
  rng = np.random.default_rng(seed)
  obs = rng.standard_normal((size, OBS_DIM)).astype(np.float32)
  return Transitions(
      observations=obs,
      actions=rng.uniform(-1, 1, (size, ACT_DIM)).astype(np.float32),
      rewards=-(rng.random(size) < 0.9).astype(np.float32),
      discounts=np.ones(size, np.float32),
      next_observations=np.roll(obs, -1, axis=0),
      episode_ends=np.zeros(size, bool))


def _config() -> IQLConfig:
  return IQLConfig(hidden_dims=HIDDEN_DIMS, batch_size=BATCH_SIZE,
                   offline_steps=10**9)


def _networks(config: IQLConfig):
  return iql_networks.make_networks(
      iql_networks.spec_from_dims(OBS_DIM, ACT_DIM), config)


def make_scan_runner(data: Transitions, steps_per_call: int, seed: int = 0):
  """`run(n)`: n updates of one seed, `steps_per_call` per jitted call.

  Metrics go to the host after every call, as the learner's logger takes
  them (with 100 updates per call that is negligible; with 1 it is not).
  """
  config = _config()
  networks, optimizers = _networks(config), training.make_optimizers(config)
  steps = training.jit_offline_steps(
      training.make_offline_steps(networks, config, optimizers))
  state = [training.init_training_state(networks, optimizers,
                                        jax.random.PRNGKey(seed))]

  def run(num_updates: int):
    for _ in range(num_updates // steps_per_call):
      state[0], metrics = steps(state[0], data, steps_per_call)
      jax.device_get(metrics)
    jax.block_until_ready(state[0])
  return run


def make_vmap_runner(data: Transitions, num_seeds: int):
  """`run(n)`: n updates of each of `num_seeds` seeds, vmapped in one call."""
  config = _config()
  networks, optimizers = _networks(config), training.make_optimizers(config)
  steps = training.make_multi_seed_steps(networks, config, optimizers)
  states = [training.init_training_states(
      networks, optimizers, training.seed_keys(range(num_seeds)))]

  def run(num_updates: int):
    for _ in range(num_updates // SCAN_STEPS):
      states[0], metrics = steps(states[0], data, SCAN_STEPS)
      jax.device_get(metrics)
    jax.block_until_ready(states[0])
  return run


# ---- The original JAX IQL code's structure (baseline), written out. ----

class _MLP(nn.Module):
  dims: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for i, size in enumerate(self.dims):
      x = nn.Dense(size)(x)
      if i + 1 < len(self.dims):
        x = nn.relu(x)
    return x


class _DoubleCritic(nn.Module):
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, obs, act):
    x = jnp.concatenate([obs, act], -1)
    return (_MLP((*self.hidden, 1))(x)[..., 0],
            _MLP((*self.hidden, 1))(x)[..., 0])


class _Value(nn.Module):
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, obs):
    return _MLP((*self.hidden, 1))(obs)[..., 0]


class _Policy(nn.Module):
  hidden: Sequence[int]
  act_dim: int

  @nn.compact
  def __call__(self, obs):
    mean = jnp.tanh(_MLP((*self.hidden, self.act_dim))(obs))
    log_std = jnp.clip(self.param('log_stds', nn.initializers.zeros,
                                  (self.act_dim,)), -5.0, 2.0)
    return mean, log_std


def make_original_runner(data: Transitions, seed: int = 0):
  """Host numpy sampling + one jitted update per call, as the original code."""
  config = IQLConfig()
  critic, value = _DoubleCritic(HIDDEN_DIMS), _Value(HIDDEN_DIMS)
  actor = _Policy(HIDDEN_DIMS, ACT_DIM)
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  obs, act = np.zeros((1, OBS_DIM), np.float32), np.zeros((1, ACT_DIM), np.float32)
  params = {'actor': actor.init(keys[0], obs), 'critic': critic.init(keys[1], obs, act),
            'value': value.init(keys[2], obs)}
  params['target_critic'] = params['critic']
  opts = {'actor': optax.adam(optax.cosine_decay_schedule(3e-4, 10**6)),
          'critic': optax.adam(3e-4), 'value': optax.adam(3e-4)}
  opt_states = {k: opts[k].init(params[k]) for k in opts}

  def apply_gradient(name, loss_fn, params, opt_states):
    grads = jax.grad(loss_fn)(params[name])
    updates, opt_state = opts[name].update(grads, opt_states[name])
    return optax.apply_updates(params[name], updates), opt_state

  @jax.jit
  def update(params, opt_states, batch):
    obs, act, rew, mask, next_obs = batch
    # update_v
    q = jnp.minimum(*critic.apply(params['target_critic'], obs, act))
    def value_loss(p):
      diff = q - value.apply(p, obs)
      return (jnp.where(diff > 0, config.expectile, 1 - config.expectile)
              * diff**2).mean()
    new_value, value_opt = apply_gradient('value', value_loss, params,
                                          opt_states)
    # awr_update_actor
    v = value.apply(new_value, obs)
    q = jnp.minimum(*critic.apply(params['target_critic'], obs, act))
    exp_a = jnp.minimum(jnp.exp((q - v) * config.temperature), 100.0)
    def actor_loss(p):
      mean, log_std = actor.apply(p, obs)
      return -(exp_a * iql_networks.gaussian_log_prob(act, mean, log_std)).mean()
    new_actor, actor_opt = apply_gradient('actor', actor_loss, params,
                                          opt_states)
    # update_q
    target_q = rew + config.discount * mask * value.apply(new_value, next_obs)
    def critic_loss(p):
      q1, q2 = critic.apply(p, obs, act)
      return ((q1 - target_q)**2 + (q2 - target_q)**2).mean()
    new_critic, critic_opt = apply_gradient('critic', critic_loss, params,
                                            opt_states)
    # target_update
    new_target = jax.tree_util.tree_map(
        lambda p, tp: p * config.target_update_rate
        + tp * (1 - config.target_update_rate),
        new_critic, params['target_critic'])
    return ({'actor': new_actor, 'critic': new_critic, 'value': new_value,
             'target_critic': new_target},
            {'actor': actor_opt, 'critic': critic_opt, 'value': value_opt})

  host = [np.asarray(x) for x in (data.observations, data.actions,
                                  data.rewards, data.discounts,
                                  data.next_observations)]
  np_rng = np.random.default_rng(seed)
  state = [params, opt_states]

  def run(num_updates: int):
    for _ in range(num_updates):
      idx = np_rng.integers(len(host[0]), size=BATCH_SIZE)
      state[:] = update(*state, tuple(x[idx] for x in host))
    jax.block_until_ready(state)
  return run


def measure(runners: Dict[str, Callable[[int], None]], repeats: int,
            updates: int, log=print) -> Dict[str, float]:
  """Median updates/s of each runner over interleaved, timed repeats."""
  for run in runners.values():
    run(WARMUP_UPDATES)  # Compilation and caches, not timed.
  rates = {name: [] for name in runners}
  for r in range(repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      run(updates)
      rates[name].append(updates / (time.perf_counter() - start))
    log(f'repeat {r + 1}/{repeats}: ' + ', '.join(
        f'{n} {v[-1]:.1f}/s' for n, v in rates.items()))
  return {name: statistics.median(v) for name, v in rates.items()}


def parse_seed_counts(text: str):
  counts = [int(n) for n in text.split(',') if n.strip()]
  if not counts or min(counts) <= 0:
    raise argparse.ArgumentTypeError(f'positive seed counts, got {text!r}')
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=DEFAULT_REPEATS)
  parser.add_argument('--updates', type=int, default=DEFAULT_UPDATES,
                      help='updates per timed repeat (multiple of 100)')
  parser.add_argument('--seeds', type=parse_seed_counts,
                      default=parse_seed_counts(DEFAULT_SEED_COUNTS),
                      help='seed counts of the vmapped variants')
  parser.add_argument('--no_original', action='store_true',
                      help="skip the original code's structure (baseline)")
  args = parser.parse_args()
  updates = max(SCAN_STEPS, args.updates // SCAN_STEPS * SCAN_STEPS)

  data = training.device_dataset(synthetic_dataset())
  runners = {'scan': make_scan_runner(data, SCAN_STEPS),
             'single': make_scan_runner(data, 1)}
  seeds_of = {'scan': 1, 'single': 1}
  for n in args.seeds:
    runners[f'vmap_{n}'] = make_vmap_runner(data, n)
    seeds_of[f'vmap_{n}'] = n
  if not args.no_original:
    runners['original'] = make_original_runner(synthetic_dataset())
    seeds_of['original'] = 1
  rates = measure(runners, args.repeats, updates)  # Updates/s of each seed.
  seed_rates = {name: rate * seeds_of[name] for name, rate in rates.items()}
  gflop = update_flops() / 1e9
  print(f'devices: {jax.devices()}  jax {jax.__version__}  batch '
        f'{BATCH_SIZE}, obs {OBS_DIM}, action {ACT_DIM}, hidden {HIDDEN_DIMS}')
  for name, rate in rates.items():
    print(f'{name:>8}: {seed_rates[name]:8.1f} seed-updates/s '
          f'({seeds_of[name]:2d} seeds x {rate:7.1f} updates/s)  '
          f'x{seed_rates[name] / rates["scan"]:5.2f} vs scan  '
          f'{seed_rates[name] * gflop:6.1f} GFLOP/s')
  print(f'analytic cost: {gflop:.4f} GFLOP per update'
        + ('' if args.no_original else
           f'; speed-up over the original structure: scan '
           f'x{rates["scan"] / rates["original"]:.2f}, single '
           f'x{rates["single"] / rates["original"]:.2f}'))
  result = {
      'updates_per_s': round(rates['scan'], 2),
      'updates_per_s_single': round(rates['single'], 2),
      'vmap': {str(seeds_of[name]): {
          'seed_updates_per_s': round(seed_rates[name], 2),
          'updates_per_s_per_seed': round(rates[name], 2),
          'ratio_vs_scan': round(seed_rates[name] / rates['scan'], 3)}
               for name in rates if name.startswith('vmap_')},
      'gflop_per_update': round(gflop, 4),
      'gflop_per_s': round(rates['scan'] * gflop, 2),
      'scan_steps_per_call': SCAN_STEPS, 'batch_size': BATCH_SIZE,
      'repeats': args.repeats, 'updates_per_repeat': updates,
      'backend': jax.default_backend(), 'jax_version': jax.__version__,
      'multi_seed_map': ('lax.map' if jax.default_backend() == 'cpu' else
                         'vmap'),
  }
  if not args.no_original:
    result['updates_per_s_original'] = round(rates['original'], 2)
    result['speedup_vs_original'] = round(rates['scan'] / rates['original'], 3)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
