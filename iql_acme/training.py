"""The IQL core: training state, the pure update, on-device offline training.

Imports only jax, flax, optax and numpy (and this package's own pure modules),
so it runs on any JAX: the pinned 2022 stack and the newest release alike (a
GPU learner does not need Acme, Reverb or TensorFlow). `learning.IQLLearner`
wraps it for Acme/Reverb; `experiments/train_offline.py` uses it directly.

* `make_update_step(networks, config, optimizers)`: the pure update
  `(state, batch) -> (state, metrics)` of Algorithm 1.
* `make_offline_steps(...)`: `num_steps` updates on batches sampled on device
  from the dataset, under `lax.scan` (one jitted call).
* `make_online_steps(...)`: a traced number of updates on batches mixing the
  offline dataset with the online transitions the learner holds on device
  (`append_transitions` writes new ones into that ring buffer).
* `make_multi_seed_steps(...)` / `init_training_states(...)`: the same for N
  independent seeds at once, `jax.vmap` over a stacked `TrainingState` that
  shares the one on-device dataset.
* `save_state` / `load_state`: the state to and from flax's msgpack bytes.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from iql_acme import losses
from iql_acme.config import IQLConfig
from iql_acme.networks import IQLNetworks, gaussian_log_prob
from iql_acme.types import Transitions

Metrics = Dict[str, jnp.ndarray]


class TrainingState(NamedTuple):
  policy_params: optax.Params
  policy_opt_state: optax.OptState
  critic_params: optax.Params
  target_critic_params: optax.Params
  critic_opt_state: optax.OptState
  value_params: optax.Params
  value_opt_state: optax.OptState
  key: jax.Array
  steps: jnp.ndarray  # Gradient updates done so far (int32 scalar).


def actor_learning_rate(config: IQLConfig) -> optax.Schedule:
  """Cosine decay over the offline steps, then a constant online rate.

  Decaying to zero and staying there would freeze the policy during
  fine-tuning, so the online piece is constant, at
  `online_actor_learning_rate` (default: actor_learning_rate). With
  `actor_cosine_decay` off the offline piece is constant too, as in the
  original IQL code's fine-tuning configs (no decay in either phase).
  """
  online = (config.actor_learning_rate
            if config.online_actor_learning_rate is None
            else config.online_actor_learning_rate)
  if config.actor_cosine_decay:
    offline = optax.cosine_decay_schedule(config.actor_learning_rate,
                                          max(config.offline_steps, 1))
  else:
    offline = optax.constant_schedule(config.actor_learning_rate)
  return optax.join_schedules([offline, optax.constant_schedule(online)],
                              boundaries=[config.offline_steps])


class Optimizers(NamedTuple):
  policy: optax.GradientTransformation
  critic: optax.GradientTransformation
  value: optax.GradientTransformation


def make_optimizers(config: IQLConfig) -> Optimizers:
  return Optimizers(policy=optax.adam(actor_learning_rate(config)),
                    critic=optax.adam(config.critic_learning_rate),
                    value=optax.adam(config.value_learning_rate))


def init_training_state(networks: IQLNetworks, optimizers: Optimizers,
                        key: jax.Array) -> TrainingState:
  init_key, key = jax.random.split(key)
  policy_params, critic_params, value_params = networks.init(init_key)
  return TrainingState(
      policy_params=policy_params,
      policy_opt_state=optimizers.policy.init(policy_params),
      critic_params=critic_params,
      # A separate buffer: the update donates its input state.
      target_critic_params=jax.tree_util.tree_map(jnp.copy, critic_params),
      critic_opt_state=optimizers.critic.init(critic_params),
      value_params=value_params,
      value_opt_state=optimizers.value.init(value_params),
      key=key,
      steps=jnp.zeros((), jnp.int32))


def polyak_update(target, online, rate: float):
  """target <- (1 - rate) * target + rate * online."""
  return jax.tree_util.tree_map(lambda t, o: (1 - rate) * t + rate * o,
                                target, online)


def make_update_step(networks: IQLNetworks, config: IQLConfig,
                     optimizers: Optimizers):
  """Returns the pure update `(state, batch) -> (state, metrics)`."""

  def min_target_q(params, batch):
    q1, q2 = networks.critic.apply(params, batch.observations, batch.actions)
    return jnp.minimum(q1, q2)

  def value_loss_fn(value_params, target_q, batch):
    v = networks.value.apply(value_params, batch.observations)
    return losses.value_loss(v, target_q, config.expectile), v

  def actor_loss_fn(policy_params, advantage, batch, dropout_key):
    mean, log_std = networks.policy.apply(
        policy_params, batch.observations, training=True,
        rngs={'dropout': dropout_key})
    weights = losses.awr_weights(advantage, config.temperature,
                                 config.max_weight)
    log_prob = gaussian_log_prob(batch.actions, mean, log_std)
    return losses.actor_loss(log_prob, weights), weights

  def critic_loss_fn(critic_params, target, batch):
    q1, q2 = networks.critic.apply(critic_params, batch.observations,
                                   batch.actions)
    return losses.critic_loss(q1, q2, target), q1

  def update_step(state: TrainingState,
                  batch: Transitions) -> Tuple[TrainingState, Metrics]:
    key, dropout_key = jax.random.split(state.key)
    # Eq. (5): V towards an upper expectile of min_i Q_hat_i(s, a).
    target_q = min_target_q(state.target_critic_params, batch)
    (v_loss, v), v_grads = jax.value_and_grad(value_loss_fn, has_aux=True)(
        state.value_params, target_q, batch)
    v_updates, value_opt_state = optimizers.value.update(
        v_grads, state.value_opt_state)
    value_params = optax.apply_updates(state.value_params, v_updates)

    # V(s) for eq. (7) and V(s') for eq. (6), both under the updated V (as
    # the original code does), in one forward pass over [s; s'].
    v_new, next_v = jnp.split(networks.value.apply(
        value_params, jnp.concatenate([batch.observations,
                                       batch.next_observations])), 2)

    # Eq. (7): AWR with the advantage min_i Q_hat_i(s, a) - V(s).
    advantage = target_q - v_new
    (a_loss, weights), a_grads = jax.value_and_grad(
        actor_loss_fn, has_aux=True)(state.policy_params, advantage, batch,
                                     dropout_key)
    a_updates, policy_opt_state = optimizers.policy.update(
        a_grads, state.policy_opt_state)
    policy_params = optax.apply_updates(state.policy_params, a_updates)

    # Eq. (6): Q towards r + gamma * mask * V(s').
    target = losses.td_target(batch.rewards, config.discount,
                              batch.discounts, next_v)
    (q_loss, q1), q_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        state.critic_params, target, batch)
    q_updates, critic_opt_state = optimizers.critic.update(
        q_grads, state.critic_opt_state)
    critic_params = optax.apply_updates(state.critic_params, q_updates)
    target_critic_params = polyak_update(
        state.target_critic_params, critic_params, config.target_update_rate)

    new_state = TrainingState(
        policy_params=policy_params, policy_opt_state=policy_opt_state,
        critic_params=critic_params,
        target_critic_params=target_critic_params,
        critic_opt_state=critic_opt_state, value_params=value_params,
        value_opt_state=value_opt_state, key=key, steps=state.steps + 1)
    metrics = {
        'value_loss': v_loss, 'critic_loss': q_loss, 'actor_loss': a_loss,
        'v': v.mean(), 'q': q1.mean(), 'target_q': target_q.mean(),
        'advantage': advantage.mean(), 'awr_weight': weights.mean(),
        'awr_weight_max': weights.max(), 'reward': batch.rewards.mean(),
        'actor_lr': actor_learning_rate(config)(state.steps),
    }
    return new_state, metrics

  return update_step


def sample_transitions(key: jax.Array, data: Transitions,
                       batch_size: int) -> Transitions:
  """A uniform batch (with replacement) from a dataset held on device."""
  idx = jax.random.randint(key, (batch_size,), 0, data.rewards.shape[0])
  return jax.tree_util.tree_map(lambda x: x[idx], data)


def mix_batches(key: jax.Array, offline: Transitions, online: Transitions,
                online_prob: jnp.ndarray, fixed_fraction: Optional[float]):
  """Row-wise choice between an offline and an online batch.

  With `fixed_fraction` None every row is online with probability
  `online_prob` (= n_online / (n_offline + n_online)), which is exactly uniform
  sampling from one pool of all transitions. Otherwise the first
  round(fixed_fraction * B) rows are online (RLPD-style symmetric sampling).
  """
  batch_size = offline.rewards.shape[0]
  if fixed_fraction is None:
    use_online = jax.random.uniform(key, (batch_size,)) < online_prob
  else:
    use_online = jnp.arange(batch_size) < round(fixed_fraction * batch_size)

  def choose(off, on):
    mask = use_online.reshape((batch_size,) + (1,) * (off.ndim - 1))
    return jnp.where(mask, on, off)
  return jax.tree_util.tree_map(choose, offline, online), use_online.mean()


def mean_metrics(stacked: Metrics) -> Metrics:
  """Per-update metrics stacked by `lax.scan` -> their mean over the updates."""
  return jax.tree_util.tree_map(lambda x: x.mean(axis=0), stacked)


def device_dataset(data: Transitions, device=None) -> Transitions:
  """The dataset as float/bool arrays in the memory of `device`.

  Default: the first device of the default backend, i.e. the GPU when JAX
  has one, so the offline phase never copies a batch from the host.
  """
  device = device or jax.devices()[0]
  return jax.device_put(Transitions(*[np.asarray(x) for x in data]), device)


OfflineSteps = Callable[[TrainingState, Transitions, int],
                        Tuple[TrainingState, Metrics]]


def make_offline_steps(networks: IQLNetworks, config: IQLConfig,
                       optimizers: Optional[Optimizers] = None) -> OfflineSteps:
  """Returns `steps(state, data, num_steps) -> (state, mean metrics)`, unjitted.

  `num_steps` updates under `lax.scan`, each on a batch of
  `config.batch_size` transitions sampled on device from `data`.
  """
  optimizers = optimizers or make_optimizers(config)
  update_step = make_update_step(networks, config, optimizers)

  def offline_steps(state, data, num_steps):
    def body(state, _):
      key, sample_key = jax.random.split(state.key)
      batch = sample_transitions(sample_key, data, config.batch_size)
      return update_step(state._replace(key=key), batch)
    state, metrics = jax.lax.scan(body, state, None, length=num_steps)
    return state, mean_metrics(metrics)
  return offline_steps


def jit_offline_steps(offline_steps: OfflineSteps) -> OfflineSteps:
  """`num_steps` static (the scan length); the input state is donated."""
  return jax.jit(offline_steps, static_argnums=2, donate_argnums=0)


def empty_transitions(capacity: int, obs_dim: int, act_dim: int,
                      device=None) -> Transitions:
  """`capacity` zero transitions on device: an online buffer to fill."""
  zeros = lambda *shape: np.zeros(shape, np.float32)
  return device_dataset(Transitions(
      zeros(capacity, obs_dim), zeros(capacity, act_dim), zeros(capacity),
      zeros(capacity), zeros(capacity, obs_dim),
      np.zeros(capacity, bool)), device)


def append_transitions(buffer: Transitions, new: Transitions,
                       num_new: jnp.ndarray, position: jnp.ndarray):
  """Writes the first `num_new` rows of `new` at `position` onward, wrapping.

  `new` has a fixed number of rows (so one compiled call serves any count);
  rows past `num_new` are padding and go nowhere (scatter mode 'drop').
  """
  capacity = buffer.rewards.shape[0]
  rows = jnp.arange(new.rewards.shape[0])
  slots = jnp.where(rows < num_new, (position + rows) % capacity, capacity)
  return jax.tree_util.tree_map(
      lambda b, x: b.at[slots].set(x.astype(b.dtype), mode='drop'), buffer,
      new)


OnlineSteps = Callable[[TrainingState, Transitions, Transitions, jnp.ndarray,
                        jnp.ndarray], Tuple[TrainingState, Metrics]]


def make_online_steps(networks: IQLNetworks, config: IQLConfig,
                      optimizers: Optional[Optimizers] = None) -> OnlineSteps:
  """`steps(state, offline, online, num_online, num_updates)`, unjitted.

  `num_updates` updates (a traced count: one compiled call serves any) on
  batches mixing `offline` with the first `num_online` rows of `online`
  (`mix_batches`: one uniform pool, or `config.online_fraction`). Returns
  the metrics' mean over the updates (zeros for none).
  """
  optimizers = optimizers or make_optimizers(config)
  update_step = make_update_step(networks, config, optimizers)
  batch_size = config.batch_size

  def one_update(state, offline, online, num_online, online_prob):
    key, offline_key, online_key, mix_key = jax.random.split(state.key, 4)
    offline_batch = sample_transitions(offline_key, offline, batch_size)
    idx = jax.random.randint(online_key, (batch_size,), 0, num_online)
    online_batch = jax.tree_util.tree_map(lambda x: x[idx], online)
    batch, fraction = mix_batches(mix_key, offline_batch, online_batch,
                                  online_prob, config.online_fraction)
    state, metrics = update_step(state._replace(key=key), batch)
    return state, {**metrics, 'online_fraction': fraction}

  def online_steps(state, offline, online, num_online, num_updates):
    num_online = jnp.maximum(num_online, 1)
    online_prob = num_online / (num_online + offline.rewards.shape[0])
    metric_shapes = jax.eval_shape(one_update, state, offline, online,
                                   num_online, online_prob)[1]
    zeros = jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, m.dtype),
                                   metric_shapes)

    def body(_, carry):
      state, totals = carry
      state, metrics = one_update(state, offline, online, num_online,
                                  online_prob)
      return state, jax.tree_util.tree_map(jnp.add, totals, metrics)
    state, totals = jax.lax.fori_loop(0, num_updates, body, (state, zeros))
    return state, jax.tree_util.tree_map(
        lambda t: t / jnp.maximum(num_updates, 1), totals)
  return online_steps


def seed_keys(seeds: Sequence[int]) -> jax.Array:
  """One PRNG key per seed, stacked: seed i's key is PRNGKey(seed_i)."""
  return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def run_keys(seed: int, num_actors: int) -> Tuple[jax.Array, jax.Array,
                                                  List[jax.Array]]:
  """A fine-tuning run's keys: (learner, evaluator, [actor per actor]).

  The Launchpad program takes its nodes' keys from here, and an offline
  control can start from the same learner key (`learner_keys`).
  """
  learner, evaluator, *actors = jax.random.split(jax.random.PRNGKey(seed),
                                                 2 + num_actors)
  return learner, evaluator, actors


def learner_keys(seeds: Sequence[int], num_actors: int) -> jax.Array:
  """The learner keys of runs with `seeds` and `num_actors`, stacked.

  A control trained from these starts where those runs' learners start,
  and samples the same offline batches, so (up to float rounding) its
  offline phase is theirs: the two arms share their offline end.
  """
  return jnp.stack([run_keys(int(s), num_actors)[0] for s in seeds])


def init_training_states(networks: IQLNetworks, optimizers: Optimizers,
                         keys: jax.Array) -> TrainingState:
  """N independent states stacked on a leading axis (one per key in `keys`)."""
  return jax.vmap(lambda k: init_training_state(networks, optimizers, k))(keys)


def make_multi_seed_steps(networks: IQLNetworks, config: IQLConfig,
                          optimizers: Optional[Optimizers] = None,
                          vectorize: Optional[bool] = None) -> OfflineSteps:
  """`steps(states, data, num_steps)` for stacked states, jitted.

  One `jax.vmap` over the seed axis of the state (on CPU a `lax.map`, see
  below); every seed samples its own batches (from its own key) from the
  same on-device dataset. Metrics come back with the seed axis leading.
  `vectorize` forces one or the other (default: vmap unless on CPU).
  """
  offline_steps = make_offline_steps(networks, config, optimizers)

  def multi_seed_steps(states, data, num_steps):
    def one_seed(state):
      return offline_steps(state, data, num_steps)
    if not (vectorize if vectorize is not None else
            jax.default_backend() != 'cpu'):
      # XLA:CPU (jax 0.4.30) runs the twin-Q ensemble matmul, which vmap
      # gives a second batch axis, fused with its bias add ~200x slower
      # than with one batch axis (4 pen-sized seeds: 0.8 vs 97
      # seed-updates/s). A CPU gains no throughput from vmap anyway, so
      # there the seeds take turns inside the same jitted call.
      return jax.lax.map(one_seed, states)
    return jax.vmap(one_seed)(states)
  return jit_offline_steps(multi_seed_steps)


def select_seed(states: TrainingState, index: int) -> TrainingState:
  """Seed `index`'s state out of stacked states."""
  return jax.tree_util.tree_map(lambda x: x[index], states)


def save_state(path: str, state: TrainingState) -> None:
  """Writes the state as flax msgpack bytes (readable on any JAX version)."""
  with open(path, 'wb') as f:
    f.write(flax.serialization.to_bytes(jax.device_get(state)))


def load_state(path: str, template: TrainingState) -> TrainingState:
  """Reads a state `save_state` wrote; `template` gives its structure."""
  with open(path, 'rb') as f:
    return flax.serialization.from_bytes(template, f.read())
