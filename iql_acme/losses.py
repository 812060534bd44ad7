"""IQL's losses, each a few lines that read like the paper's equations."""

import jax
import jax.numpy as jnp


def expectile_loss(diff: jnp.ndarray, expectile: float) -> jnp.ndarray:
  """L_2^tau(u) = |tau - 1(u < 0)| u^2, elementwise (section 4.1).

  With tau = 0.5 this is 0.5 * u^2, i.e. half the squared error.
  """
  weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
  return weight * diff**2


def value_loss(v: jnp.ndarray, target_q: jnp.ndarray, expectile: float):
  """Eq. (5): expectile regression of V(s) towards min_i Q_hat_i(s, a)."""
  return expectile_loss(target_q - v, expectile).mean()


def td_target(reward, discount, mask, next_v):
  """r + gamma * mask * V(s'), the target of eq. (6)."""
  return reward + discount * mask * next_v


def critic_loss(q1, q2, target):
  """Eq. (6) for both Q heads: MSE to the TD target."""
  return ((q1 - target)**2 + (q2 - target)**2).mean()


def awr_weights(advantage, temperature: float, max_weight: float):
  """exp(beta * (Q - V)) clipped to (-inf, max_weight] (appendix B)."""
  return jnp.minimum(jnp.exp(temperature * advantage), max_weight)


def actor_loss(log_prob, weights):
  """Eq. (7): advantage-weighted negative log-likelihood of dataset actions."""
  return -(jax.lax.stop_gradient(weights) * log_prob).mean()
