"""IQL networks (Flax): twin Q, V, and a Gaussian policy; policy factories."""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iql_acme.config import IQLConfig

_LOG_2PI = float(np.log(2 * np.pi))


def _sum_rows(g):
  """Sum of g over all axes but the last, as (ones [2, N] @ g [N, H])[0].

  XLA:CPU turns a column sum into a tree reduction that runs about 8x slower
  than a matrix product (and this is the bias gradient of every layer, every
  update). Two rows of ones, not one: XLA fuses a matrix-vector product into
  its producer as a naive loop, as slow as the tree reduction.
  """
  rows = g.reshape(-1, g.shape[-1])
  ones = jnp.ones((2, rows.shape[0]), g.dtype)
  # HIGHEST: full float32 where the default is lower (TF32 on GPUs).
  return jnp.matmul(ones, rows, precision=jax.lax.Precision.HIGHEST)[0]


@jax.custom_vjp
def add_bias(y, bias):
  """y + bias, bias [H] broadcast over y's leading axes."""
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, g):
  return g, _sum_rows(g)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _plus_ensemble_bias(y, bias):
  return y + bias.reshape(bias.shape[:1] + (1,) * (y.ndim - 2) + bias.shape[1:])


@jax.custom_vjp
def add_ensemble_bias(y, bias):
  """y + bias for an ensemble: y [E, ..., H], bias [E, H]."""
  return _plus_ensemble_bias(y, bias)


def _add_ensemble_bias_fwd(y, bias):
  return _plus_ensemble_bias(y, bias), None


def _add_ensemble_bias_bwd(_, g):
  return g, jnp.stack([_sum_rows(g[e]) for e in range(g.shape[0])])


add_ensemble_bias.defvjp(_add_ensemble_bias_fwd, _add_ensemble_bias_bwd)


class Dense(nn.Module):
  """nn.Dense (same parameters and initialisation), faster bias gradient.

  With `ensemble_size` E it is E independent layers: kernel [E, in, out],
  bias [E, out], input and output [E, ..., features], one batched matmul.
  """
  features: int
  ensemble_size: Optional[int] = None

  @nn.compact
  def __call__(self, x):
    if self.ensemble_size is None:
      kernel = self.param('kernel', nn.initializers.lecun_normal(),
                          (x.shape[-1], self.features))
      bias = self.param('bias', nn.initializers.zeros, (self.features,))
      return add_bias(x @ kernel, bias)
    # Fan-in per member: the ensemble axis is a batch axis of the init.
    kernel = self.param('kernel', nn.initializers.lecun_normal(batch_axis=0),
                        (self.ensemble_size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros,
                      (self.ensemble_size, self.features))
    return add_ensemble_bias(jnp.matmul(x, kernel), bias)


class MLP(nn.Module):
  """ReLU MLP; optional dropout after each hidden layer (policy regulariser).

  With `ensemble_size` E it is E independent MLPs on inputs [E, B, in].
  """
  hidden_dims: Sequence[int]
  output_dim: int
  dropout_rate: Optional[float] = None
  ensemble_size: Optional[int] = None

  @nn.compact
  def __call__(self, x, training: bool = False):
    for i, width in enumerate(self.hidden_dims):
      x = nn.relu(Dense(width, self.ensemble_size, name=f'Dense_{i}')(x))
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not training)
    return Dense(self.output_dim, self.ensemble_size,
                 name=f'Dense_{len(self.hidden_dims)}')(x)


class TwinQ(nn.Module):
  """Two independent Q(s, a) heads (clipped double Q-learning).

  The heads are one ensemble MLP: every layer of both heads is a single
  batched matmul with the head axis leading, which runs faster on CPU than
  two separate MLPs. The math is that of two separate MLPs.
  """
  hidden_dims: Sequence[int]
  num_heads: int = 2

  @nn.compact
  def __call__(self, observation, action):
    x = jnp.concatenate([observation, action], axis=-1)
    unbatched = x.ndim == 1
    x = jnp.broadcast_to(x, (self.num_heads,) + (1,) * unbatched + x.shape)
    q = MLP(self.hidden_dims, 1, ensemble_size=self.num_heads,
            name='heads')(x)[..., 0]
    if unbatched:
      q = q[:, 0]
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


class ArraySpec(NamedTuple):
  """The part of an Acme/dm_env array spec the networks read."""
  shape: Sequence[int]
  minimum: Any = -1.0
  maximum: Any = 1.0


class ShapeSpec(NamedTuple):
  """Duck-types `acme.specs.EnvironmentSpec` for `make_networks`."""
  observations: ArraySpec
  actions: ArraySpec


def spec_from_dims(obs_dim: int, action_dim: int, action_minimum=-1.0,
                   action_maximum=1.0) -> ShapeSpec:
  """A spec for flat observations and a box of actions, without Acme."""
  return ShapeSpec(ArraySpec((obs_dim,)),
                   ArraySpec((action_dim,), action_minimum, action_maximum))


def make_networks(spec, config: Optional[IQLConfig] = None) -> IQLNetworks:
  """Builds IQL's networks for an environment spec (Acme's network factory).

  `spec` is anything shaped like `acme.specs.EnvironmentSpec`: it needs
  `.observations.shape` and `.actions.shape/minimum/maximum` (e.g.
  `spec_from_dims(obs_dim, action_dim)`); Acme itself is not imported.
  """
  config = config or IQLConfig()
  obs_dim = int(np.prod(spec.observations.shape))
  action_dim = int(np.prod(spec.actions.shape))
  hidden = tuple(config.hidden_dims)

  def bound(value):
    return np.broadcast_to(value, (action_dim,)).astype(np.float32)
  return IQLNetworks(
      policy=GaussianPolicy(hidden, action_dim, config.log_std_min,
                            config.log_std_max, config.policy_dropout_rate),
      critic=TwinQ(hidden),
      value=ValueNetwork(hidden),
      dummy_observation=np.zeros((1, obs_dim), np.float32),
      dummy_action=np.zeros((1, action_dim), np.float32),
      action_minimum=bound(spec.actions.minimum),
      action_maximum=bound(spec.actions.maximum))


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
