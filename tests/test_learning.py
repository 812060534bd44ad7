"""The IQL learner against independently computed references.

Each test pins one piece of Algorithm 1 that a plausible bug would change:
which Q network V and the advantage regress to, the Polyak rate, the AWR
clip, the actor's learning-rate schedule, the TD target's terminal mask, the
online/offline batch mix, the learner's offline chunking, save/restore, and
that the whole update actually fits a known value.
"""

import collections
import math
import os

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')

from acme import specs  # pylint: disable=g-import-not-at-top,wrong-import-position
from acme import types as acme_types  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import learning  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import networks as iql_networks  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.config import IQLConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.networks import gaussian_log_prob  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.types import RewardTransform, Transitions  # pylint: disable=g-import-not-at-top,wrong-import-position

OBS_DIM = 3
ACT_DIM = 2
HIDDEN = (16, 16)
BATCH = 32
# Two target-Q heads with different constant outputs, and other constants for
# the online critic and V: a bug that uses max, one head, or the online critic
# gives a different value loss.
TARGET_Q1, TARGET_Q2 = 1.0, 3.0
ONLINE_Q1, ONLINE_Q2 = 5.0, 7.0
V_CONST = 0.5
RTOL = 1e-5


def _spec():
  return specs.EnvironmentSpec(
      observations=specs.Array((OBS_DIM,), np.float32),
      actions=specs.BoundedArray((ACT_DIM,), np.float32, -1.0, 1.0),
      rewards=specs.Array((), np.float32),
      discounts=specs.BoundedArray((), np.float32, 0.0, 1.0))


def _config(**overrides):
  return IQLConfig(**{'hidden_dims': HIDDEN, 'batch_size': BATCH, **overrides})


def _batch(seed=0, size=BATCH, discounts=None, rewards=None):
  rng = np.random.default_rng(seed)
  return Transitions(
      observations=rng.standard_normal((size, OBS_DIM)).astype(np.float32),
      actions=rng.uniform(-0.9, 0.9, (size, ACT_DIM)).astype(np.float32),
      rewards=(rng.standard_normal(size) if rewards is None
               else np.full(size, rewards)).astype(np.float32),
      discounts=(np.ones(size) if discounts is None
                 else discounts).astype(np.float32),
      next_observations=rng.standard_normal((size, OBS_DIM)).astype(np.float32),
      episode_ends=np.zeros(size, bool))


def _setup(config, seed=0):
  networks = iql_networks.make_networks(_spec(), config)
  optimizers = learning.make_optimizers(config)
  state = learning.init_training_state(networks, optimizers,
                                       jax.random.PRNGKey(seed))
  update = jax.jit(learning.make_update_step(networks, config, optimizers))
  return networks, state, update


def _constant_output(params, outputs):
  """Params whose MLP(s) output `outputs` everywhere: zero kernels, and the
  last layer's bias set to the constants (one per head for the critic)."""
  params = jax.tree_util.tree_map(jnp.zeros_like, params)
  inner = dict(params['params'])
  (name, mlp), = inner.items()  # One submodule: 'heads' or 'MLP_0'.
  mlp = dict(mlp)
  last = f'Dense_{len(HIDDEN)}'
  mlp[last] = {**mlp[last], 'bias': jnp.asarray(outputs, jnp.float32).reshape(
      mlp[last]['bias'].shape)}
  inner[name] = mlp
  return {'params': inner}


def _tree_allclose(a, b, **kwargs):
  leaves = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda x, y: np.allclose(x, y, **kwargs), a, b))
  return all(leaves)


def test_constant_output_helper():
  networks, state, _ = _setup(_config())
  batch = _batch()
  q1, q2 = networks.critic.apply(
      _constant_output(state.critic_params, [TARGET_Q1, TARGET_Q2]),
      batch.observations, batch.actions)
  np.testing.assert_allclose(q1, TARGET_Q1)
  np.testing.assert_allclose(q2, TARGET_Q2)
  v = networks.value.apply(_constant_output(state.value_params, V_CONST),
                           batch.observations)
  np.testing.assert_allclose(v, V_CONST)


def _reference_mlp(layers, x):
  """Plain x @ kernel + bias layers with ReLU between: autodiff reference."""
  for i, layer in enumerate(layers):
    x = x @ layer['kernel'] + layer['bias']
    if i + 1 < len(layers):
      x = jax.nn.relu(x)
  return x


def test_networks_match_plain_mlps_and_their_gradients():
  # The networks use a custom bias gradient and a batched twin-Q ensemble
  # for speed; values and gradients must be those of plain separate MLPs.
  networks, state, _ = _setup(_config())
  batch = _batch()
  obs_act = jnp.concatenate([batch.observations, batch.actions], -1)
  layer_names = [f'Dense_{i}' for i in range(len(HIDDEN) + 1)]

  def critic_loss(params):
    q1, q2 = networks.critic.apply(params, batch.observations, batch.actions)
    return jnp.sum(jnp.sin(q1) + q2**2)

  def reference_critic_loss(params):
    heads = params['params']['heads']
    q = [_reference_mlp([jax.tree_util.tree_map(lambda x: x[e], heads[n])
                         for n in layer_names], obs_act)[:, 0]
         for e in range(2)]
    return jnp.sum(jnp.sin(q[0]) + q[1]**2)

  def value_loss(params):
    return jnp.sum(jnp.sin(networks.value.apply(params, batch.observations)))

  def reference_value_loss(params):
    layers = [params['params']['MLP_0'][n] for n in layer_names]
    return jnp.sum(jnp.sin(_reference_mlp(layers, batch.observations)[:, 0]))

  for loss, reference, params in (
      (critic_loss, reference_critic_loss, state.critic_params),
      (value_loss, reference_value_loss, state.value_params)):
    np.testing.assert_allclose(loss(params), reference(params), rtol=1e-5)
    grads, ref_grads = jax.grad(loss)(params), jax.grad(reference)(params)
    for got, want in zip(jax.tree_util.tree_leaves(grads),
                         jax.tree_util.tree_leaves(ref_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The two heads are initialised independently.
  kernel = state.critic_params['params']['heads']['Dense_0']['kernel']
  assert not np.allclose(kernel[0], kernel[1])


def test_value_and_advantage_use_min_of_target_heads():
  config = _config()
  networks, state, update = _setup(config)
  state = state._replace(
      target_critic_params=_constant_output(state.target_critic_params,
                                            [TARGET_Q1, TARGET_Q2]),
      critic_params=_constant_output(state.critic_params,
                                     [ONLINE_Q1, ONLINE_Q2]),
      value_params=_constant_output(state.value_params, V_CONST))
  batch = _batch()
  new_state, metrics = update(state, batch)

  def expected_value_loss(q):
    return float(losses.expectile_loss(jnp.float32(q - V_CONST),
                                       config.expectile))
  q_min = min(TARGET_Q1, TARGET_Q2)
  np.testing.assert_allclose(metrics['target_q'], q_min, rtol=RTOL)
  np.testing.assert_allclose(metrics['value_loss'], expected_value_loss(q_min),
                             rtol=RTOL)
  # The other choices a bug could make give different losses.
  for wrong in (max(TARGET_Q1, TARGET_Q2), min(ONLINE_Q1, ONLINE_Q2),
                0.5 * (TARGET_Q1 + TARGET_Q2)):
    assert abs(expected_value_loss(wrong) - expected_value_loss(q_min)) > 0.1

  # Advantage: min target Q minus V(s) under the *updated* V.
  v_new = networks.value.apply(new_state.value_params, batch.observations)
  assert not np.allclose(v_new, V_CONST)  # V did move.
  advantage = q_min - v_new
  np.testing.assert_allclose(metrics['advantage'], advantage.mean(),
                             rtol=RTOL, atol=1e-6)
  weights = np.minimum(np.exp(config.temperature * advantage),
                       config.max_weight)
  np.testing.assert_allclose(metrics['awr_weight'], weights.mean(), rtol=RTOL)


def test_target_critic_moves_by_polyak_at_configured_rate():
  rate = 0.1
  config = _config(target_update_rate=rate)
  _, state, update = _setup(config)
  # Start the target away from the critic so the average is visible.
  state = state._replace(target_critic_params=jax.tree_util.tree_map(
      lambda x: x + 1.0, state.target_critic_params))
  old_target = jax.device_get(state.target_critic_params)
  old_critic = jax.device_get(state.critic_params)
  new_state, _ = update(state, _batch())
  new_critic = jax.device_get(new_state.critic_params)
  assert not _tree_allclose(new_critic, old_critic)  # The critic was updated.
  expected = jax.tree_util.tree_map(
      lambda t, c: (1.0 - rate) * np.asarray(t, np.float64)
      + rate * np.asarray(c, np.float64), old_target, new_critic)
  assert _tree_allclose(new_state.target_critic_params, expected,
                        rtol=1e-6, atol=1e-6)
  # Not the old critic, and not some other rate.
  wrong = jax.tree_util.tree_map(lambda t, c: (1 - rate) * t + rate * c,
                                 old_target, old_critic)
  assert not _tree_allclose(new_state.target_critic_params, wrong,
                            rtol=1e-6, atol=1e-6)


def test_awr_weights_clipped_at_max_weight():
  max_weight = 7.0
  config = _config(max_weight=max_weight)
  networks, state, update = _setup(config)
  # Advantage ~ 1000: exp(beta * A) overflows to inf unless clipped.
  state = state._replace(
      target_critic_params=_constant_output(state.target_critic_params,
                                            [1000.0, 1000.0]),
      value_params=_constant_output(state.value_params, 0.0))
  batch = _batch()
  _, metrics = update(state, batch)
  assert float(metrics['awr_weight_max']) == max_weight
  assert float(metrics['awr_weight']) == max_weight
  # The actor loss is the clipped weight times the old policy's NLL.
  mean, log_std = networks.policy.apply(state.policy_params,
                                        batch.observations)
  log_prob = gaussian_log_prob(batch.actions, mean, log_std)
  np.testing.assert_allclose(metrics['actor_loss'],
                             -max_weight * float(log_prob.mean()), rtol=RTOL)
  assert np.isfinite(float(metrics['actor_loss']))


def test_actor_learning_rate_cosine_over_offline_steps_then_constant():
  lr, total = 1e-3, 100
  config = _config(actor_learning_rate=lr, offline_steps=total)
  schedule = learning.actor_learning_rate(config)

  def closed_form(t):
    return 0.5 * lr * (1.0 + math.cos(math.pi * t / total))
  for t in (0, 1, 25, 50, 75, 99):
    np.testing.assert_allclose(schedule(t), closed_form(t), rtol=1e-5,
                               atol=1e-9)
  for t in (total, total + 1, 10 * total):  # Online: constant, not zero.
    np.testing.assert_allclose(schedule(t), lr, rtol=1e-6)

  # The policy optimizer applies it: with a constant gradient Adam's
  # direction is g / (|g| + eps) = 1 at every step, so each update is -lr_t.
  optimizer = learning.make_optimizers(config).policy
  params = jnp.zeros(())
  opt_state = optimizer.init(params)
  steps = []
  for _ in range(total + 3):
    updates, opt_state = optimizer.update(jnp.ones(()), opt_state)
    steps.append(-float(updates))
  expected = [closed_form(t) if t < total else lr for t in range(total + 3)]
  # float32 Adam moments drift by ~1e-5 relative over 100 steps.
  np.testing.assert_allclose(steps, expected, rtol=1e-4, atol=1e-9)

  # The learner reports the same rate at its step count.
  _, state, update = _setup(config)
  _, metrics = update(state._replace(steps=jnp.int32(total // 2)), _batch())
  np.testing.assert_allclose(metrics['actor_lr'], closed_form(total // 2),
                             rtol=1e-5)


def test_q_target_is_r_plus_discounted_masked_next_value():
  config = _config(discount=0.9)
  networks, state, update = _setup(config)
  discounts = np.ones(BATCH)
  discounts[::2] = 0.0  # Every other transition ends in a terminal state.
  batch = _batch(discounts=discounts)
  # Large V(s'), so ignoring or not ignoring it changes the loss visibly.
  batch = batch._replace(next_observations=batch.next_observations * 50.0)
  state = state._replace(value_params=jax.tree_util.tree_map(
      lambda x: x * 3.0, state.value_params))
  new_state, metrics = update(state, batch)

  # Reference: r + gamma * mask * V_new(s') with V after this update's V step.
  next_v = np.asarray(networks.value.apply(new_state.value_params,
                                           batch.next_observations))
  q1, q2 = networks.critic.apply(state.critic_params, batch.observations,
                                 batch.actions)

  def loss(target):
    return float(np.mean((q1 - target)**2 + (q2 - target)**2))
  target = batch.rewards + 0.9 * batch.discounts * next_v
  np.testing.assert_allclose(metrics['critic_loss'], loss(target), rtol=1e-4)
  # Terminal transitions' targets are just r.
  np.testing.assert_allclose(target[::2], batch.rewards[::2])
  unmasked = batch.rewards + 0.9 * next_v
  assert abs(loss(unmasked) - loss(target)) > 1e-2 * loss(target)
  np.testing.assert_allclose(
      losses.td_target(batch.rewards, 0.9, batch.discounts, next_v), target,
      rtol=1e-6)


def test_mix_batches_pool_mode_fraction_matches_online_prob():
  size, prob = 20_000, 0.3
  offline = _batch(size=size)._replace(rewards=np.zeros(size, np.float32))
  online = _batch(seed=1, size=size)._replace(rewards=np.ones(size, np.float32))
  mixed, fraction = learning.mix_batches(jax.random.PRNGKey(0), offline,
                                         online, jnp.float32(prob), None)
  from_online = np.asarray(mixed.rewards) == 1.0
  np.testing.assert_allclose(fraction, from_online.mean(), rtol=1e-6)
  # Each row is online with probability p: the fraction has binomial std
  # sqrt(p (1 - p) / B) = 0.0032 here; allow 4 std.
  tolerance = 4 * math.sqrt(prob * (1 - prob) / size)
  assert abs(float(fraction) - prob) < tolerance
  # Rows are whole transitions from one side or the other.
  np.testing.assert_array_equal(
      np.asarray(mixed.observations),
      np.where(from_online[:, None], online.observations,
               offline.observations))


@pytest.mark.parametrize('size,fraction', [(256, 0.5), (10, 0.3), (7, 0.5),
                                           (7, 0.0)])
def test_mix_batches_fixed_mode_exact_count(size, fraction):
  offline = _batch(size=size)._replace(rewards=np.zeros(size, np.float32))
  online = _batch(seed=1, size=size)._replace(rewards=np.ones(size, np.float32))
  mixed, got = learning.mix_batches(jax.random.PRNGKey(0), offline, online,
                                    jnp.float32(0.9), fraction)
  n_online = int(np.sum(np.asarray(mixed.rewards) == 1.0))
  assert n_online == round(fraction * size)
  np.testing.assert_allclose(got, n_online / size)


class _ListLogger:
  def __init__(self):
    self.rows = []

  def write(self, row):
    self.rows.append(dict(row))

  def close(self):
    pass


def _learner(config, data, seed=0, **kwargs):
  logger = _ListLogger()
  learner = learning.IQLLearner(
      iql_networks.make_networks(_spec(), config), config,
      jax.random.PRNGKey(seed), data, logger=logger, **kwargs)
  return learner, logger


def test_learner_offline_chunks_stop_exactly_and_save_restore():
  config = _config(offline_steps=250, offline_steps_per_call=100)
  data = _batch(size=500)
  learner, logger = _learner(config, data)
  learner.step()
  learner.step()
  saved = learner.save()
  learner.step()
  assert [row['learner_steps'] for row in logger.rows] == [100, 200, 250]
  assert all(row['phase'] == 'offline' for row in logger.rows)
  assert learner.steps == 250 and not learner.in_offline_phase
  assert int(learner.get_variables(['learner_steps'])[0]) == 250
  with pytest.raises(RuntimeError, match='replay'):
    learner.step()  # Online phase without a replay iterator.

  # save/restore round-trips: another learner restored from the state saved
  # at 200 steps takes the same last chunk of 50 to the same variables.
  other, other_logger = _learner(config, data, seed=1)
  other.restore(saved)
  assert other.steps == 200 and other.in_offline_phase
  other.step()
  assert other.steps == 250
  assert other_logger.rows[-1]['learner_steps'] == 250
  for name in ('policy', 'critic', 'value'):
    assert _tree_allclose(other.get_variables([name])[0],
                          learner.get_variables([name])[0], rtol=1e-6,
                          atol=1e-7)
  # Restoring the learner itself rewinds it.
  learner.restore(saved)
  assert learner.steps == 200 and learner.in_offline_phase


def test_online_step_mixes_replay_and_applies_reward_transform():
  config = _config(offline_steps=0, online_fraction=1.0)
  transform = RewardTransform(scale=2.0, shift=-1.0)
  online = _batch(seed=3)
  sample = collections.namedtuple('Sample', 'data info')(
      acme_types.Transition(online.observations, online.actions,
                            online.rewards, online.discounts,
                            online.next_observations),
      collections.namedtuple('Info', 'table_size')(np.full(BATCH, 1000)))
  learner, logger = _learner(config, _batch(size=100),
                             replay_iterator=iter([sample]),
                             reward_transform=transform)
  assert not learner.in_offline_phase
  learner.step()
  row = logger.rows[-1]
  assert learner.steps == 1 and row['phase'] == 'online'
  assert row['online_fraction'] == 1.0  # online_fraction=1: all from replay.
  np.testing.assert_allclose(row['reward'], transform(online.rewards).mean(),
                             rtol=1e-5)


def test_transitions_from_replay_applies_reward_transform():
  batch = _batch(seed=4, size=5)
  replay = acme_types.Transition(
      batch.observations.astype(np.float64), batch.actions, batch.rewards,
      batch.discounts, batch.next_observations)
  transform = RewardTransform(scale=0.5, shift=-1.0)
  got = learning.transitions_from_replay(replay, transform)
  np.testing.assert_allclose(got.rewards, 0.5 * batch.rewards - 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(got.observations, batch.observations)
  np.testing.assert_allclose(got.next_observations, batch.next_observations)
  np.testing.assert_array_equal(got.discounts, batch.discounts)
  assert got.observations.dtype == jnp.float32
  assert not np.any(got.episode_ends)


def test_learner_fits_value_of_constant_reward():
  # Reward r on every step, never terminal: Q = V = r / (1 - gamma) for any
  # policy and expectile. Faster rates than the paper's so it converges here.
  reward, discount = 1.0, 0.8
  value = reward / (1.0 - discount)  # 5.0
  config = _config(discount=discount, offline_steps=3000,
                   offline_steps_per_call=500, critic_learning_rate=3e-3,
                   value_learning_rate=3e-3, target_update_rate=0.05)
  data = _batch(size=1000, rewards=reward)
  learner, logger = _learner(config, data)
  while learner.in_offline_phase:
    learner.step()
  networks = iql_networks.make_networks(_spec(), config)
  v = networks.value.apply(learner.get_variables(['value'])[0],
                           data.observations)
  q1, q2 = networks.critic.apply(learner.get_variables(['critic'])[0],
                                 data.observations, data.actions)
  for estimate in (v, q1, q2):
    np.testing.assert_allclose(np.mean(estimate), value, rtol=0.03)
    assert np.std(estimate) < 0.05 * value
  first, last = logger.rows[0], logger.rows[-1]
  # Both losses start near 0 (V and Q start near 0), so the first chunk's
  # mean is the scale: they must fall by an order of magnitude from it.
  assert last['critic_loss'] < 0.05 * first['critic_loss']
  assert last['value_loss'] < 0.1 * first['value_loss']

