"""IQL networks (Flax): twin Q, V, and a Gaussian policy; policy factories."""

import dataclasses
from typing import Callable, Optional, Sequence

from acme import specs
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iql_acme.config import IQLConfig

_LOG_2PI = float(np.log(2 * np.pi))


class MLP(nn.Module):
  """ReLU MLP; optional dropout after each hidden layer (policy regulariser)."""
  hidden_dims: Sequence[int]
  output_dim: int
  dropout_rate: Optional[float] = None

  @nn.compact
  def __call__(self, x, training: bool = False):
    for width in self.hidden_dims:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not training)
    return nn.Dense(self.output_dim)(x)


class TwinQ(nn.Module):
  """Two independent Q(s, a) heads (clipped double Q-learning).

  The heads are one MLP vmapped over a leading ensemble axis of the
  parameters: the first layers of both heads become one [B, in] x [in, 2H]
  matmul and the others batched matmuls, which run faster on CPU than two
  separate MLPs. The math is that of two separate MLPs.
  """
  hidden_dims: Sequence[int]
  num_heads: int = 2

  @nn.compact
  def __call__(self, observation, action):
    x = jnp.concatenate([observation, action], axis=-1)
    heads = nn.vmap(MLP, variable_axes={'params': 0},
                    split_rngs={'params': True}, in_axes=None, out_axes=0,
                    axis_size=self.num_heads)
    q = heads(self.hidden_dims, 1, name='heads')(x)[..., 0]
    return q[0], q[1]


class ValueNetwork(nn.Module):
  hidden_dims: Sequence[int]

  @nn.compact
  def __call__(self, observation):
    return MLP(self.hidden_dims, 1)(observation)[..., 0]


class GaussianPolicy(nn.Module):
  """N(tanh(mu(s)), diag(exp(log_std))^2) with a state-independent log_std.

  As the original IQL code: the mean is squashed with tanh to the action box,
  the distribution itself is not (so dataset actions keep finite likelihood).
  """
  hidden_dims: Sequence[int]
  action_dim: int
  log_std_min: float
  log_std_max: float
  dropout_rate: Optional[float] = None

  @nn.compact
  def __call__(self, observation, training: bool = False):
    mean = MLP(self.hidden_dims, self.action_dim, self.dropout_rate)(
        observation, training)
    log_std = self.param('log_std', nn.initializers.zeros, (self.action_dim,))
    log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
    return jnp.tanh(mean), jnp.broadcast_to(log_std, mean.shape)


def gaussian_log_prob(action, mean, log_std):
  """log N(action; mean, diag(exp(2 log_std))), summed over action dims."""
  z = (action - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z**2 - log_std - 0.5 * _LOG_2PI, axis=-1)


@dataclasses.dataclass
class IQLNetworks:
  """Modules plus the dummy inputs their `init` needs."""
  policy: GaussianPolicy
  critic: TwinQ
  value: ValueNetwork
  dummy_observation: np.ndarray
  dummy_action: np.ndarray
  action_minimum: np.ndarray
  action_maximum: np.ndarray

  def init(self, key):
    """Returns (policy_params, critic_params, value_params)."""
    policy_key, critic_key, value_key = jax.random.split(key, 3)
    obs, act = self.dummy_observation, self.dummy_action
    return (self.policy.init(policy_key, obs),
            self.critic.init(critic_key, obs, act),
            self.value.init(value_key, obs))


def make_networks(spec: specs.EnvironmentSpec,
                  config: Optional[IQLConfig] = None) -> IQLNetworks:
  """Builds IQL's networks for an environment spec (Acme's network factory)."""
  config = config or IQLConfig()
  obs_dim = int(np.prod(spec.observations.shape))
  action_dim = int(np.prod(spec.actions.shape))
  hidden = tuple(config.hidden_dims)
  return IQLNetworks(
      policy=GaussianPolicy(hidden, action_dim, config.log_std_min,
                            config.log_std_max, config.policy_dropout_rate),
      critic=TwinQ(hidden),
      value=ValueNetwork(hidden),
      dummy_observation=np.zeros((1, obs_dim), np.float32),
      dummy_action=np.zeros((1, action_dim), np.float32),
      action_minimum=np.broadcast_to(spec.actions.minimum, (action_dim,)).astype(np.float32),
      action_maximum=np.broadcast_to(spec.actions.maximum, (action_dim,)).astype(np.float32))


FeedForwardPolicy = Callable[[object, jax.Array, jax.Array], jax.Array]


def apply_policy_and_sample(networks: IQLNetworks,
                            exploration_noise: float = 0.0) -> FeedForwardPolicy:
  """Acme feed-forward policy `(params, key, obs) -> action`.

  The action is the policy mean plus N(0, exploration_noise^2) noise, clipped to
  the action bounds (appendix C). With noise 0 it is the deterministic policy.
  """
  def policy(params, key, observation):
    mean, _ = networks.policy.apply(params, observation)
    noise = exploration_noise * jax.random.normal(key, mean.shape)
    return jnp.clip(mean + noise, networks.action_minimum,
                    networks.action_maximum)
  return policy


def make_behaviour_policy(networks: IQLNetworks, config: IQLConfig):
  """The actors' policy: Gaussian exploration noise of std config.exploration_noise."""
  return apply_policy_and_sample(networks, config.exploration_noise)


def make_evaluation_policy(networks: IQLNetworks):
  """The evaluator's policy: the deterministic policy mean."""
  return apply_policy_and_sample(networks, 0.0)
