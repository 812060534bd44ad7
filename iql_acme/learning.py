"""IQL learner: a pure jitted update on a state pytree (Algorithm 1).

Offline phase: batches are sampled on device from the pre-loaded dataset and
`offline_steps_per_call` updates run per jitted call under `lax.scan`.
Online phase: each update mixes a Reverb batch of fresh transitions with an
offline batch, either as one uniform pool or with a fixed online fraction.
"""

import threading
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import acme
from acme.utils import counting
from acme.utils import loggers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import reverb

from iql_acme import losses
from iql_acme.config import IQLConfig
from iql_acme.networks import IQLNetworks, gaussian_log_prob
from iql_acme.types import RewardTransform, Transitions

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
  fine-tuning; the original IQL fine-tuning configs turn the decay off
  online, which is what the constant second piece does.
  """
  if not config.actor_cosine_decay:
    return optax.constant_schedule(config.actor_learning_rate)
  return optax.join_schedules(
      [optax.cosine_decay_schedule(config.actor_learning_rate,
                                   max(config.offline_steps, 1)),
       optax.constant_schedule(config.actor_learning_rate)],
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


def transitions_from_replay(data, reward_transform: RewardTransform):
  """Acme `types.Transition` from Reverb -> `Transitions`, same reward transform."""
  return Transitions(
      observations=jnp.asarray(data.observation, jnp.float32),
      actions=jnp.asarray(data.action, jnp.float32),
      rewards=reward_transform(jnp.asarray(data.reward, jnp.float32)),
      discounts=jnp.asarray(data.discount, jnp.float32),
      next_observations=jnp.asarray(data.next_observation, jnp.float32),
      episode_ends=jnp.zeros(np.shape(data.reward), bool))


def _mean_metrics(stacked: Metrics) -> Metrics:
  return jax.tree_util.tree_map(lambda x: x.mean(axis=0), stacked)


class IQLLearner(acme.Learner):
  """Offline-to-online IQL learner (`acme.core.Learner`)."""

  def __init__(self,
               networks: IQLNetworks,
               config: IQLConfig,
               random_key: jax.Array,
               offline_data: Transitions,
               replay_iterator: Optional[Iterator[reverb.ReplaySample]] = None,
               reward_transform: RewardTransform = RewardTransform(),
               counter: Optional[counting.Counter] = None,
               logger: Optional[loggers.Logger] = None):
    if offline_data.size == 0:
      raise ValueError('the offline dataset is empty; pass a dataset with at '
                       'least one transition')
    self._config = config
    self._replay_iterator = replay_iterator
    self._counter = counter or counting.Counter(prefix='learner')
    self._logger = logger or loggers.make_default_logger(
        'learner', asynchronous=True, time_delta=10.0, steps_key='learner_steps')
    # The whole offline dataset lives in device memory (GPU when present).
    self._offline_data = jax.device_put(
        Transitions(*[np.asarray(x) for x in offline_data]))
    self._num_offline = offline_data.size

    optimizers = make_optimizers(config)
    update_step = make_update_step(networks, config, optimizers)
    batch_size = config.batch_size

    def offline_steps(state, data, num_steps):
      def body(state, _):
        key, sample_key = jax.random.split(state.key)
        batch = sample_transitions(sample_key, data, batch_size)
        return update_step(state._replace(key=key), batch)
      state, metrics = jax.lax.scan(body, state, None, length=num_steps)
      return state, _mean_metrics(metrics)

    def online_steps(state, data, replay_data, online_prob):
      # Converting inside the jitted call: one host->device transfer of the
      # raw Reverb rows per call, and the reward transform fused in. The rows
      # hold k batches, one per update.
      online = transitions_from_replay(replay_data, reward_transform)
      num_steps = online.rewards.shape[0] // batch_size
      online = jax.tree_util.tree_map(
          lambda x: x.reshape((num_steps, batch_size) + x.shape[1:]), online)

      def body(state, online_batch):
        key, sample_key, mix_key = jax.random.split(state.key, 3)
        offline = sample_transitions(sample_key, data, batch_size)
        batch, fraction = mix_batches(mix_key, offline, online_batch,
                                      online_prob, config.online_fraction)
        state, metrics = update_step(state._replace(key=key), batch)
        return state, {**metrics, 'online_fraction': fraction}
      state, metrics = jax.lax.scan(body, state, online)
      return state, _mean_metrics(metrics)

    self._offline_steps = jax.jit(offline_steps, static_argnums=2,
                                  donate_argnums=0)
    self._online_steps = jax.jit(online_steps, donate_argnums=0)
    self._state = init_training_state(networks, optimizers, random_key)
    self._steps = 0
    self._timestamp = None
    # The jitted updates donate the old state's buffers; the lock keeps
    # readers on other threads (courier's get_variables, checkpointing) from
    # touching a donated array.
    self._lock = threading.Lock()

  @property
  def steps(self) -> int:
    return self._steps

  @property
  def in_offline_phase(self) -> bool:
    return self.steps < self._config.offline_steps

  @property
  def state(self) -> TrainingState:
    return self._state

  def step(self):
    if self.in_offline_phase:
      num = min(self._config.offline_steps_per_call,
                self._config.offline_steps - self.steps)
      with self._lock:
        self._state, metrics = self._offline_steps(self._state,
                                                   self._offline_data, num)
        self._steps += num
      # Same keys in both phases: CSV loggers take their header from row one.
      metrics = {**metrics, 'online_fraction': 0.0, 'replay_size': 0.0}
      phase = 'offline'
    else:
      if self._replay_iterator is None:
        raise RuntimeError('offline phase done and no replay iterator was '
                           'given; pass replay_iterator for online training')
      sample = next(self._replay_iterator)
      rows = len(sample.data.reward)
      num, remainder = divmod(rows, self._config.batch_size)
      if num == 0 or remainder:
        raise ValueError(
            f'replay batches must hold a multiple of batch_size='
            f'{self._config.batch_size} rows, got {rows}; '
            'build the iterator with IQLBuilder.make_dataset_iterator')
      n_online = float(np.max(sample.info.table_size))
      online_prob = n_online / (n_online + self._num_offline)
      with self._lock:
        self._state, metrics = self._online_steps(
            self._state, self._offline_data, sample.data, online_prob)
        self._steps += num
      phase = 'online'
      metrics = {**metrics, 'replay_size': n_online}

    now = time.time()
    elapsed = now - self._timestamp if self._timestamp else 0.0
    self._timestamp = now
    counts = self._counter.increment(steps=num, walltime=elapsed)
    metrics = jax.device_get(metrics)
    self._logger.write({**{k: float(v) for k, v in metrics.items()}, **counts,
                        'learner_steps': self._steps, 'phase': phase,
                        'updates_per_s': num / elapsed if elapsed else 0.0})

  def get_variables(self, names: List[str]) -> List[np.ndarray]:
    with self._lock:
      variables = {
          'policy': self._state.policy_params,
          'critic': self._state.critic_params,
          'value': self._state.value_params,
          'learner_steps': self._state.steps,
      }
      return [jax.device_get(variables[name]) for name in names]

  def save(self) -> TrainingState:
    with self._lock:
      return jax.device_get(self._state)

  def restore(self, state: TrainingState):
    with self._lock:
      self._state = jax.device_put(state)
      self._steps = int(self._state.steps)
