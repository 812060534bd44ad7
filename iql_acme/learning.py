"""IQLLearner: the Acme/Reverb adapter around the pure IQL core.

The core (`iql_acme.training`: training state, the pure update, on-device
sampling under `lax.scan`) imports no Acme, Reverb or TensorFlow; this
module adds what an Acme learner needs around it.

Offline phase: batches are sampled on device from the pre-loaded dataset and
`offline_steps_per_call` updates run per jitted call under `lax.scan`.
Online phase: the learner takes each new transition once from Reverb's
replay queue (`builder.ReplayQueueReader`), appends it to its own copy of
the online data in device memory, and runs `updates_per_env_step` updates
per new transition on batches mixing offline and online data, either as one
uniform pool or with a fixed online fraction. Sampling never goes through
Reverb: about 15 us of CPU per sampled row, 256 rows per update, held the
online phase to 53-75% of the offline rate (benchmarks/bench_system.py).
"""

import concurrent.futures
import math
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
# (benchmarks/bench_system.py).
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


def transitions_from_rows(rows, reward_transform: RewardTransform,
                         obs_dim: int) -> Transitions:
  """Replay rows -> `Transitions` (jax arrays), the offline reward transform."""
  data = split_transition_rows(jnp.asarray(rows, jnp.float32), obs_dim)
  return Transitions(
      observations=data.observation, actions=data.action,
      rewards=reward_transform(data.reward), discounts=data.discount,
      next_observations=data.next_observation,
      episode_ends=jnp.zeros(data.reward.shape, bool))


def replay_queue_size(config: IQLConfig) -> int:
  """Transitions the learner's replay queue holds before actors must wait.

  The learner updates only on transitions it has taken (never ahead of the
  actors); the actors may run `rate_limit_tolerance_steps` updates' worth of
  transitions ahead of it.
  """
  return max(1, math.ceil(config.rate_limit_tolerance_steps /
                          config.updates_per_env_step))


# With no new transition in replay, the learner looks again every
# REPLAY_POLL_S and returns from step() after REPLAY_WAIT_S (stoppable).
REPLAY_POLL_S = 0.005
REPLAY_WAIT_S = 0.1

# The online buffer starts this large (or at the run's budget, if smaller) and
# doubles up to `max_replay_size`; each new size compiles the update again.
INITIAL_ONLINE_CAPACITY = 65_536


class IQLLearner(acme.Learner):
  """Offline-to-online IQL learner (`acme.core.Learner`).

  `replay_iterator` yields arrays of new replay rows (`transition_row`
  layout, possibly none), each row once: `IQLBuilder.make_dataset_iterator`.
  """

  def __init__(self,
               networks: IQLNetworks,
               config: IQLConfig,
               random_key: jax.Array,
               offline_data: Transitions,
               replay_iterator: Optional[Iterator[np.ndarray]] = None,
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
    self._obs_dim = offline_data.observations.shape[-1]
    self._act_dim = offline_data.actions.shape[-1]
    self._row_size = transition_row_size(self._obs_dim, self._act_dim)
    self._rows_per_take = replay_queue_size(config)

    optimizers = make_optimizers(config)
    online_steps = training.make_online_steps(networks, config, optimizers)
    obs_dim = self._obs_dim

    def take_and_update(state, offline, online, rows, num_new, position,
                        num_online, num_updates):
      # New rows in (one host->device transfer, reward transform fused),
      # then the updates they paid for, in one jitted call.
      new = transitions_from_rows(rows, reward_transform, obs_dim)
      online = training.append_transitions(online, new, num_new, position)
      state, metrics = online_steps(state, offline, online, num_online,
                                    num_updates)
      return state, online, metrics

    self._offline_steps = training.jit_offline_steps(
        training.make_offline_steps(networks, config, optimizers))
    self._take_and_update = jax.jit(take_and_update, donate_argnums=(0, 2))
    self._state = init_training_state(networks, optimizers, random_key)
    self._steps = 0
    # Online data: a ring buffer on device; `_num_online` rows of it are
    # valid, the next goes to `_position`. `_owed` counts updates paid for
    # by transitions (updates_per_env_step each) and not yet done.
    self._online = None
    self._num_online, self._position, self._owed = 0, 0, 0.0
    self._rows_taken = 0  # Every row taken, also those the ring dropped.
    self._timestamp = None
    # The jitted updates donate the old state's buffers; the lock keeps
    # readers on other threads (courier's get_variables, checkpointing) from
    # touching a donated array, and holding it (`hold`) stops the learner
    # between a replay row taken and its update, for consistent checkpoints.
    self._lock = threading.RLock()
    # The online update compiles in the background while the offline phase
    # runs (XLA compiles outside the GIL), so the phase boundary does not
    # wait seconds for it with the actors held by the replay queue.
    self._online_compiled = None
    if replay_iterator is not None:
      capacity = self._initial_capacity()
      self._online_compiled = concurrent.futures.ThreadPoolExecutor(
          1, thread_name_prefix='compile_online').submit(
              self._compile_online, capacity)

  def _initial_capacity(self) -> int:
    return max(1, min(self._config.max_replay_size,
                      max(self._config.online_steps, self._rows_per_take),
                      INITIAL_ONLINE_CAPACITY))

  def _call_args(self, capacity: int):
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    online = jax.eval_shape(lambda: training.empty_transitions(
        capacity, self._obs_dim, self._act_dim))
    scalar = jax.ShapeDtypeStruct((), np.int32)
    return (jax.tree_util.tree_map(abstract, self._state),
            jax.tree_util.tree_map(abstract, self._offline_data),
            jax.tree_util.tree_map(abstract, online),
            jax.ShapeDtypeStruct((self._rows_per_take, self._row_size),
                                 np.float32), scalar, scalar, scalar, scalar)

  def _compile_online(self, capacity: int):
    """The online call, compiled for these shapes (not values)."""
    return capacity, self._take_and_update.lower(
        *self._call_args(capacity)).compile()

  def _run_online(self, *args):
    """One online call; the ahead-compiled one when it fits the shapes."""
    if self._online_compiled is not None:
      try:
        capacity, compiled = self._online_compiled.result()
        if capacity == self._online.rewards.shape[0]:
          return compiled(*args)
      except Exception as e:  # pylint: disable=broad-except
        logging.info('online update: jit compile (%s)', e)
      self._online_compiled = None
    return self._take_and_update(*args)

  def _reserve(self, num_new: int):
    """Makes room for `num_new` more rows: grows the buffer or wraps."""
    if self._online is None:
      self._online = training.empty_transitions(
          self._initial_capacity(), self._obs_dim, self._act_dim)
    capacity = self._online.rewards.shape[0]
    needed = self._num_online + num_new
    if needed <= capacity or capacity >= self._config.max_replay_size:
      return  # Fits, or full size: FIFO, the oldest rows are overwritten.
    new_capacity = capacity
    while new_capacity < needed:
      new_capacity *= 2
    new_capacity = min(new_capacity, self._config.max_replay_size)
    logging.info('online buffer: %d -> %d transitions (the update compiles '
                 'again)', capacity, new_capacity)
    self._set_online_rows(self.online_transitions(), new_capacity)

  def _set_online_rows(self, rows: Transitions, capacity: int):
    count = min(rows.size, capacity)
    buffer = []
    for field in rows:  # The newest `count` rows first, then empty slots.
      field = np.asarray(field)[rows.size - count:]
      pad = np.zeros((capacity - count,) + field.shape[1:], field.dtype)
      buffer.append(np.concatenate([field, pad]))
    self._online = training.device_dataset(Transitions(*buffer))
    self._num_online, self._position = count, count % capacity

  @property
  def steps(self) -> int:
    return self._steps

  @property
  def in_offline_phase(self) -> bool:
    return self.steps < self._config.offline_steps

  @property
  def state(self) -> TrainingState:
    return self._state

  @property
  def num_online(self) -> int:
    """Online transitions held (taken from replay, not yet evicted)."""
    return self._num_online

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
      num, metrics = self._online_step()
      if num is None:
        return  # No new transition within the reader's wait.
      phase = 'online'
      metrics = {**metrics, 'replay_size': float(self._num_online)}

    now = time.time()
    elapsed = now - self._timestamp if self._timestamp else 0.0
    self._timestamp = now
    counts = self._counter.increment(steps=num, walltime=elapsed)
    metrics = jax.device_get(metrics)
    self._logger.write({**{k: float(v) for k, v in metrics.items()}, **counts,
                        'learner_steps': self._steps, 'phase': phase,
                        'updates_per_s': num / elapsed if elapsed else 0.0})

  def _online_step(self):
    """Takes the new transitions, runs the updates they paid for.

    Waits up to REPLAY_WAIT_S for one (without holding the lock, so
    parameters stay readable); (None, None) if none came.
    """
    deadline = time.time() + REPLAY_WAIT_S
    while True:
      result = self._take_and_update_once()
      if result is not None or time.time() > deadline:
        return result or (None, None)
      time.sleep(REPLAY_POLL_S)

  def _take_and_update_once(self):
    with self._lock:
      rows = np.asarray(next(self._replay_iterator), np.float32)
      num_new = len(rows)
      if num_new and rows.shape[1:] != (self._row_size,):
        raise ValueError(
            f'replay rows must have {self._row_size} values (observation '
            f'{self._obs_dim}, action {self._act_dim}, reward, discount, next '
            f'observation), got shape {rows.shape}; write replay with '
            'IQLBuilder.make_adder')
      if num_new > self._rows_per_take:
        raise ValueError(f'the replay iterator gave {num_new} rows at once, '
                         f'more than the queue holds ({self._rows_per_take})')
      if num_new == 0:
        return None
      self._reserve(num_new)
      capacity = self._online.rewards.shape[0]
      num_online = min(self._num_online + num_new, capacity)
      self._owed += num_new * self._config.updates_per_env_step
      num_updates = (int(self._owed)
                     if num_online >= self._config.min_replay_size else 0)
      padded = np.zeros((self._rows_per_take, self._row_size), np.float32)
      padded[:num_new] = rows
      self._state, self._online, metrics = self._run_online(
          self._state, self._offline_data, self._online, padded,
          np.int32(num_new), np.int32(self._position), np.int32(num_online),
          np.int32(num_updates))
      self._position = (self._position + num_new) % capacity
      self._num_online = num_online
      self._rows_taken += num_new
      self._owed -= num_updates
      self._steps += num_updates
    return num_updates, metrics

  def online_transitions(self) -> Transitions:
    """The online transitions held, oldest first (numpy, transformed rewards)."""
    with self._lock:
      if self._online is None or self._num_online == 0:
        return Transitions(
            np.zeros((0, self._obs_dim), np.float32),
            np.zeros((0, self._act_dim), np.float32),
            np.zeros(0, np.float32), np.zeros(0, np.float32),
            np.zeros((0, self._obs_dim), np.float32), np.zeros(0, bool))
      capacity = self._online.rewards.shape[0]
      order = (np.arange(self._num_online) +
               (self._position - self._num_online)) % capacity
      return Transitions(*[np.asarray(x)[order]
                           for x in jax.device_get(self._online)])

  def restore_online_transitions(self, rows: Transitions,
                                 owed_updates: float = 0.0,
                                 rows_taken: Optional[int] = None):
    """Puts back what `online_transitions`, `owed_updates` and `rows_taken`
    returned (a resumed run)."""
    with self._lock:
      capacity = self._initial_capacity()
      while capacity < rows.size and capacity < self._config.max_replay_size:
        capacity = min(2 * capacity, self._config.max_replay_size)
      self._set_online_rows(rows, capacity)
      self._owed = float(owed_updates)
      self._rows_taken = rows.size if rows_taken is None else int(rows_taken)

  @property
  def rows_taken(self) -> int:
    """Replay rows taken from the queue so far (env steps learned from)."""
    return self._rows_taken

  @property
  def owed_updates(self) -> float:
    """Updates paid for by transitions taken, not yet done (< 1 per step)."""
    return self._owed

  def hold(self):
    """A context in which the learner neither updates nor takes replay rows."""
    return self._lock

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
