"""IQL's losses against hand-computed values and independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iql_acme import losses

EXPECTILES = (0.1, 0.5, 0.9, 0.99)
SAMPLE_SIZE = 200
GRADIENT_STEPS = 5000
BISECTION_STEPS = 100


def _bisection_expectile(x, tau):
  """Root of tau * sum_{x>m}(x - m) = (1 - tau) * sum_{x<m}(m - x), float64.

  The left minus the right side decreases strictly in m, from >= 0 at
  min(x) to <= 0 at max(x), so bisection on [min(x), max(x)] finds it.
  """
  lo, hi = float(np.min(x)), float(np.max(x))
  for _ in range(BISECTION_STEPS):
    m = 0.5 * (lo + hi)
    above = tau * np.sum(np.maximum(x - m, 0.))
    below = (1. - tau) * np.sum(np.maximum(m - x, 0.))
    lo, hi = (m, hi) if above > below else (lo, m)
  return 0.5 * (lo + hi)


def _minimise_value_loss(x, tau):
  """argmin_m of value_loss(m, x, tau), by plain gradient descent.

  The loss is convex in m with curvature 2 * mean(weights), between
  2 * min(tau, 1 - tau) and 2 * max(tau, 1 - tau); a step of
  1 / (2 max(tau, 1 - tau)) therefore never overshoots.
  """
  step_size = 0.5 / max(tau, 1. - tau)
  grad = jax.grad(lambda m: losses.value_loss(m, x, tau))
  return jax.lax.fori_loop(0, GRADIENT_STEPS,
                           lambda _, m: m - step_size * grad(m), jnp.mean(x))


def test_expectile_loss_hand_values():
  # tau = 0.9: positive u weighs tau, negative u weighs 1 - tau.
  #   u =  2.0:  0.9 * 4.00 = 3.6
  #   u = -2.0:  0.1 * 4.00 = 0.4
  #   u =  0.0:  0
  #   u = -0.5:  0.1 * 0.25 = 0.025
  diff = jnp.array([2., -2., 0., -0.5])
  np.testing.assert_allclose(losses.expectile_loss(diff, 0.9),
                             [3.6, 0.4, 0., 0.025], rtol=1e-6)
  # tau = 0.2 flips the asymmetry: u = 3 -> 0.2 * 9 = 1.8, u = -3 -> 0.8 * 9.
  np.testing.assert_allclose(losses.expectile_loss(jnp.array([3., -3.]), 0.2),
                             [1.8, 7.2], rtol=1e-6)


def test_half_expectile_is_half_squared_error():
  """L_2^0.5(u) = |0.5 - 1(u < 0)| u^2 = 0.5 * u^2: the factor is 1/2."""
  u = jnp.linspace(-3., 3., 13)
  np.testing.assert_allclose(losses.expectile_loss(u, 0.5), 0.5 * u**2,
                             rtol=1e-6)


@pytest.mark.parametrize('tau', EXPECTILES)
def test_minimising_value_loss_gives_sample_expectile(tau):
  x = np.random.default_rng(0).exponential(size=SAMPLE_SIZE)  # skewed
  learned = float(_minimise_value_loss(jnp.asarray(x, jnp.float32), tau))
  np.testing.assert_allclose(learned, _bisection_expectile(x, tau),
                             atol=1e-4)


def test_sample_expectiles_order_and_limits():
  """tau = 0.5 is the mean; expectiles grow with tau towards max (Lemma 1)."""
  x = np.random.default_rng(1).exponential(size=SAMPLE_SIZE)
  expectiles = [_bisection_expectile(x, tau) for tau in EXPECTILES]
  np.testing.assert_allclose(expectiles[EXPECTILES.index(0.5)], x.mean(),
                             rtol=1e-9)
  assert np.all(np.diff(expectiles) > 0)
  assert expectiles[-1] < x.max()


def test_value_loss_is_mean_expectile_loss_of_q_minus_v():
  v = jnp.array([1., 2.])
  target_q = jnp.array([3., 1.])  # u = q - v = [2, -1]
  # tau = 0.7: (0.7 * 4 + 0.3 * 1) / 2 = 1.55
  np.testing.assert_allclose(losses.value_loss(v, target_q, 0.7), 1.55,
                             rtol=1e-6)


def test_td_target_masks_bootstrap():
  reward = jnp.array([1., 1., 0.])
  mask = jnp.array([1., 0., 1.])
  next_v = jnp.array([5., 5., -2.])
  # 1 + 0.9 * 5 = 5.5; terminal: just r = 1; 0 + 0.9 * (-2) = -1.8.
  np.testing.assert_allclose(losses.td_target(reward, 0.9, mask, next_v),
                             [5.5, 1., -1.8], rtol=1e-6)


def test_critic_loss_sums_both_heads_mse():
  target = jnp.array([1., 2.])
  q1, q2 = jnp.array([0., 2.]), jnp.array([1., 5.])
  # MSE(q1) = (1 + 0) / 2 = 0.5, MSE(q2) = (0 + 9) / 2 = 4.5.
  np.testing.assert_allclose(losses.critic_loss(q1, q2, target), 5.,
                             rtol=1e-6)


def test_awr_weights_exp_below_clip_and_clipped_above():
  temperature, max_weight = 3., 100.
  clip_advantage = np.log(max_weight) / temperature  # exp(3 a) = 100 here
  advantage = np.array([-2., -0.5, 0., 0.5, clip_advantage - 0.01,
                        clip_advantage + 0.01, 10.])
  weights = np.asarray(losses.awr_weights(jnp.asarray(advantage, jnp.float32),
                                          temperature, max_weight))
  below = advantage < clip_advantage
  np.testing.assert_allclose(weights[below], np.exp(temperature
                                                    * advantage[below]),
                             rtol=1e-5)
  np.testing.assert_array_equal(weights[~below], max_weight)
  np.testing.assert_allclose(weights[2], 1.)  # zero advantage: weight 1


def test_actor_loss_does_not_differentiate_through_weights():
  log_prob = jnp.array([-1., -2.])
  weights = jnp.array([2., 0.5])
  # -(2 * -1 + 0.5 * -2) / 2 = 1.5
  np.testing.assert_allclose(losses.actor_loss(log_prob, weights), 1.5)
  grad_log_prob, grad_weights = jax.grad(losses.actor_loss, (0, 1))(log_prob,
                                                                    weights)
  np.testing.assert_allclose(grad_log_prob, -weights / 2)
  np.testing.assert_array_equal(grad_weights, 0.)


def test_zero_temperature_weights_every_action_alike():
  # beta = 0 (allowed by IQLConfig): the actor loss is plain BC's.
  advantage = jnp.array([-5., 0., 0.3, 40.])
  np.testing.assert_array_equal(losses.awr_weights(advantage, 0., 100.), 1.)
