"""The pure IQL update (iql_acme.training) against independent references.

Each test pins one piece of Algorithm 1 that a plausible bug would change:
which Q network V and the advantage regress to, the Polyak rate, the AWR
clip, the actor's learning-rate schedule, the TD target's terminal mask and
the online/offline batch mix. Core test: runs without Acme (see conftest).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iql_acme import losses
from iql_acme import networks as iql_networks
from iql_acme import training
from iql_acme.config import IQLConfig
from iql_acme.networks import gaussian_log_prob
from iql_acme.types import Transitions

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
  return iql_networks.spec_from_dims(OBS_DIM, ACT_DIM)


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
  optimizers = training.make_optimizers(config)
  state = training.init_training_state(networks, optimizers,
                                       jax.random.PRNGKey(seed))
  update = jax.jit(training.make_update_step(networks, config, optimizers))
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
  schedule = training.actor_learning_rate(config)

  def closed_form(t):
    return 0.5 * lr * (1.0 + math.cos(math.pi * t / total))
  for t in (0, 1, 25, 50, 75, 99):
    np.testing.assert_allclose(schedule(t), closed_form(t), rtol=1e-5,
                               atol=1e-9)
  for t in (total, total + 1, 10 * total):  # Online: constant, not zero.
    np.testing.assert_allclose(schedule(t), lr, rtol=1e-6)

  # The policy optimizer applies it: with a constant gradient Adam's
  # direction is g / (|g| + eps) = 1 at every step, so each update is -lr_t.
  optimizer = training.make_optimizers(config).policy
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


@pytest.mark.parametrize('cosine', [True, False])
def test_online_actor_learning_rate_takes_over_at_the_offline_end(cosine):
  lr, online, total = 1e-3, 2e-5, 100
  config = _config(actor_learning_rate=lr, offline_steps=total,
                   online_actor_learning_rate=online,
                   actor_cosine_decay=cosine)
  schedule = training.actor_learning_rate(config)
  offline = training.actor_learning_rate(_config(
      actor_learning_rate=lr, offline_steps=total, actor_cosine_decay=cosine))
  for t in (0, 1, 50, 99):  # The offline phase is unchanged,
    np.testing.assert_allclose(schedule(t), offline(t), rtol=1e-6)
  for t in (total, total + 1, 10 * total):  # then the online rate holds.
    np.testing.assert_allclose(schedule(t), online, rtol=1e-6)
  if not cosine:
    np.testing.assert_allclose(schedule(total - 1), lr, rtol=1e-6)


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
  mixed, fraction = training.mix_batches(jax.random.PRNGKey(0), offline,
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
  mixed, got = training.mix_batches(jax.random.PRNGKey(0), offline, online,
                                    jnp.float32(0.9), fraction)
  n_online = int(np.sum(np.asarray(mixed.rewards) == 1.0))
  assert n_online == round(fraction * size)
  np.testing.assert_allclose(got, n_online / size)


@pytest.mark.parametrize('overrides, message', [
    (dict(expectile=1.0), 'expectile (tau) must be in (0, 1), got 1.0'),
    (dict(expectile=0.0), 'expectile (tau) must be in (0, 1), got 0.0'),
    (dict(temperature=-0.5), 'temperature (beta) must be >= 0, got -0.5'),
    (dict(temperature=float('nan')), 'temperature (beta) must be >= 0'),
    (dict(online_actor_learning_rate=-1e-4),
     'online_actor_learning_rate must be >= 0, got -0.0001'),
])
def test_config_rejects_out_of_range_iql_hyperparameters(overrides, message):
  with pytest.raises(ValueError) as error:
    IQLConfig(**overrides)
  assert message in str(error.value)
  IQLConfig(expectile=0.5, temperature=0.)  # SARSA values, BC actor: valid.
