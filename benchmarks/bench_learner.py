"""Learner throughput: IQL gradient updates per second, pen-sized networks.

Networks as in the paper (2x256 ReLU MLPs), observation 45 and action 24
(pen), batch 256, a 100k-transition synthetic dataset. Three variants run in
the same process, interleaved, each repeat timed after its own warm-up
(compilation excluded); the median over repeats is reported:

  scan     `IQLLearner.step()` with offline_steps_per_call = 100: sampling and
           100 updates in one jitted `lax.scan` call.
  single   `IQLLearner.step()` with offline_steps_per_call = 1: one update and
           one host round trip (metrics) per call.
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
The last line printed is a JSON object with the figures.
"""

import argparse
import json
import statistics
import time
from typing import Callable, Dict, Sequence

from acme import specs
from acme.utils import loggers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from iql_acme import learning
from iql_acme import networks as iql_networks
from iql_acme.config import IQLConfig
from iql_acme.types import Transitions

OBS_DIM = 45           # pen
ACT_DIM = 24
BATCH_SIZE = 256
HIDDEN_DIMS = (256, 256)
DATASET_SIZE = 100_000
SCAN_STEPS = 100       # updates per jitted call of the scan variant
DEFAULT_REPEATS = 7
DEFAULT_UPDATES = 200  # updates per timed repeat (a multiple of SCAN_STEPS)
WARMUP_UPDATES = 200


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


def pen_spec() -> specs.EnvironmentSpec:
  return specs.EnvironmentSpec(
      observations=specs.Array((OBS_DIM,), np.float32),
      actions=specs.BoundedArray((ACT_DIM,), np.float32, -1.0, 1.0),
      rewards=specs.Array((), np.float32),
      discounts=specs.BoundedArray((), np.float32, 0.0, 1.0))


def make_learner_runner(data: Transitions, steps_per_call: int, seed: int = 0):
  """`run(n)` does n updates through `IQLLearner.step()` and waits for them."""
  config = IQLConfig(hidden_dims=HIDDEN_DIMS, batch_size=BATCH_SIZE,
                     offline_steps=10**9, offline_steps_per_call=steps_per_call)
  learner = learning.IQLLearner(
      iql_networks.make_networks(pen_spec(), config), config,
      jax.random.PRNGKey(seed), data, logger=loggers.NoOpLogger())

  def run(num_updates: int):
    for _ in range(num_updates // steps_per_call):
      learner.step()
    jax.block_until_ready(learner.state)
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=DEFAULT_REPEATS)
  parser.add_argument('--updates', type=int, default=DEFAULT_UPDATES,
                      help='updates per timed repeat (multiple of 100)')
  args = parser.parse_args()
  updates = max(SCAN_STEPS, args.updates // SCAN_STEPS * SCAN_STEPS)

  data = synthetic_dataset()
  runners = {'scan': make_learner_runner(data, SCAN_STEPS),
             'single': make_learner_runner(data, 1),
             'original': make_original_runner(data)}
  rates = measure(runners, args.repeats, updates)
  gflop = update_flops() / 1e9
  print(f'devices: {jax.devices()}  batch {BATCH_SIZE}, obs {OBS_DIM}, '
        f'action {ACT_DIM}, hidden {HIDDEN_DIMS}')
  for name, rate in rates.items():
    print(f'{name:>8}: {rate:7.1f} updates/s  {rate * gflop:6.1f} GFLOP/s')
  print(f'analytic cost: {gflop:.4f} GFLOP per update; speed-up over the '
        f'original structure: scan x{rates["scan"] / rates["original"]:.2f}, '
        f'single x{rates["single"] / rates["original"]:.2f}')
  print(json.dumps({
      'updates_per_s': round(rates['scan'], 2),
      'updates_per_s_single': round(rates['single'], 2),
      'updates_per_s_original': round(rates['original'], 2),
      'speedup_vs_original': round(rates['scan'] / rates['original'], 3),
      'gflop_per_update': round(gflop, 4),
      'gflop_per_s': round(rates['scan'] * gflop, 2),
      'scan_steps_per_call': SCAN_STEPS, 'batch_size': BATCH_SIZE,
      'repeats': args.repeats, 'updates_per_repeat': updates,
      'backend': jax.default_backend()}))


if __name__ == '__main__':
  main()
