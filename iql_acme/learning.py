"""IQLLearner: the Acme/Reverb adapter around the pure IQL core.

The core (`iql_acme.training`: training state, the pure update, on-device
offline sampling under `lax.scan`) imports no Acme, Reverb or TensorFlow; this
module adds what an Acme learner needs around it.

Offline phase: batches are sampled on device from the pre-loaded dataset and
`offline_steps_per_call` updates run per jitted call under `lax.scan`.
Online phase: each update mixes a Reverb batch of fresh transitions with an
offline batch, either as one uniform pool or with a fixed online fraction.
"""

import concurrent.futures
import threading
import time
from typing import Iterator, List, Optional

from absl import logging
import acme
from acme import types as acme_types
from acme.utils import counting
from acme.utils import loggers
import jax
import jax.numpy as jnp
import numpy as np
import reverb

from iql_acme import training
from iql_acme.config import IQLConfig
from iql_acme.networks import IQLNetworks
from iql_acme.types import RewardTransform, Transitions
# The core's names, re-exported for existing `learning.X` users.
from iql_acme.training import (  # pylint: disable=unused-import
    Metrics, Optimizers, TrainingState, actor_learning_rate,
    init_training_state, make_optimizers, make_update_step, mix_batches,
    polyak_update, sample_transitions)


# Replay stores each transition as one float32 row, laid out as
# [observation, action, reward, discount, next_observation]: Reverb's cost
# per sampled item grows with its columns (chunks to fetch, decompress and
# batch), and one column is about 4x cheaper per row than five
# (benchmarks/bench_system.py); the learner samples 256 rows per update.
SCALARS_PER_ROW = 2  # reward, discount


def transition_row_size(obs_dim: int, act_dim: int) -> int:
  return 2 * obs_dim + act_dim + SCALARS_PER_ROW


def transition_row(observation, action, reward, discount,
                   next_observation) -> np.ndarray:
  """One transition as a replay row (see SCALARS_PER_ROW for the layout)."""
  return np.concatenate([
      np.ravel(observation), np.ravel(action), [reward, discount],
      np.ravel(next_observation)]).astype(np.float32)


def split_transition_rows(rows, obs_dim: int) -> acme_types.Transition:
  """Replay rows [..., row size] -> Acme's Transition (views, no copies)."""
  act_end = rows.shape[-1] - obs_dim - SCALARS_PER_ROW
  return acme_types.Transition(
      observation=rows[..., :obs_dim], action=rows[..., obs_dim:act_end],
      reward=rows[..., act_end], discount=rows[..., act_end + 1],
      next_observation=rows[..., act_end + SCALARS_PER_ROW:])


def transitions_from_replay(data, reward_transform: RewardTransform,
                            obs_dim: Optional[int] = None):
  """Replay rows (or Acme's Transition) -> `Transitions`, same reward transform."""
  if obs_dim is not None and not hasattr(data, 'observation'):
    data = split_transition_rows(data, obs_dim)
  return Transitions(
      observations=jnp.asarray(data.observation, jnp.float32),
      actions=jnp.asarray(data.action, jnp.float32),
      rewards=reward_transform(jnp.asarray(data.reward, jnp.float32)),
      discounts=jnp.asarray(data.discount, jnp.float32),
      next_observations=jnp.asarray(data.next_observation, jnp.float32),
      episode_ends=jnp.zeros(np.shape(data.reward), bool))


def replay_row_spec(config: IQLConfig,
                    offline_data: Transitions) -> jax.ShapeDtypeStruct:
  """What one replay fetch of the dataset iterator holds (rows x row size)."""
  size = transition_row_size(offline_data.observations.shape[-1],
                             offline_data.actions.shape[-1])
  return jax.ShapeDtypeStruct(
      (config.batch_size * config.num_sgd_steps_per_step, size), np.float32)


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
    self._offline_data = training.device_dataset(offline_data)
    self._num_offline = offline_data.size

    optimizers = make_optimizers(config)
    update_step = make_update_step(networks, config, optimizers)
    batch_size = config.batch_size
    obs_dim = offline_data.observations.shape[-1]

    def online_steps(state, data, replay_data, online_prob):
      # Converting inside the jitted call: one host->device transfer of the
      # raw Reverb rows per call, and the reward transform fused in. The rows
      # hold k batches, one per update.
      online = transitions_from_replay(replay_data, reward_transform, obs_dim)
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
      return state, training.mean_metrics(metrics)

    self._offline_steps = training.jit_offline_steps(
        training.make_offline_steps(networks, config, optimizers))
    self._online_steps = jax.jit(online_steps, donate_argnums=0)
    self._state = init_training_state(networks, optimizers, random_key)
    self._steps = 0
    self._timestamp = None
    # The jitted updates donate the old state's buffers; the lock keeps
    # readers on other threads (courier's get_variables, checkpointing) from
    # touching a donated array.
    self._lock = threading.Lock()
    # The online update compiles in the background while the offline phase
    # runs (XLA compiles outside the GIL), so the phase boundary does not
    # wait seconds for it with the actors held by the rate limiter.
    self._online_compiled = None
    if replay_iterator is not None:
      abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
      self._online_compiled = concurrent.futures.ThreadPoolExecutor(
          1, thread_name_prefix='compile_online').submit(
              self._compile_online,
              jax.tree_util.tree_map(abstract, self._state),
              jax.tree_util.tree_map(abstract, self._offline_data),
              replay_row_spec(config, offline_data))

  def _compile_online(self, state, data, rows):
    """The online update, compiled for these shapes (not values)."""
    # The online share is a Python float, as step() passes it.
    return self._online_steps.lower(state, data, rows, 0.5).compile()

  def _run_online(self, replay_data, online_prob):
    """One jitted online call; the ahead-compiled one when it fits the data."""
    if self._online_compiled is not None:
      try:
        return self._online_compiled.result()(
            self._state, self._offline_data, replay_data, online_prob)
      except Exception as e:  # pylint: disable=broad-except
        # Another replay layout or fetch size (or a failed compile): jit.
        logging.info('online update: jit compile (%s)', e)
        self._online_compiled = None
    return self._online_steps(self._state, self._offline_data, replay_data,
                              online_prob)

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
      rows = len(jax.tree_util.tree_leaves(sample.data)[0])
      num, remainder = divmod(rows, self._config.batch_size)
      if num == 0 or remainder:
        raise ValueError(
            f'replay batches must hold a multiple of batch_size='
            f'{self._config.batch_size} rows, got {rows}; '
            'build the iterator with IQLBuilder.make_dataset_iterator')
      n_online = float(np.max(sample.info.table_size))
      online_prob = n_online / (n_online + self._num_offline)
      with self._lock:
        self._state, metrics = self._run_online(sample.data, online_prob)
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
