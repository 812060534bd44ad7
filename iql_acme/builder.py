"""IQLBuilder: offline-to-online IQL as an Acme `ActorLearnerBuilder`.

Works with Acme 0.4.0's own `DistributedLayout` / `LocalLayout` and with the
project's Launchpad program (`iql_acme/program.py`).
"""

import queue
import threading
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

from acme import adders
from acme import core
from acme import specs
from acme.agents.jax import builders
from acme.datasets import reverb as datasets
from acme.jax import networks as networks_lib
from acme.utils import counting
from acme.utils import loggers
import numpy as np
import reverb
from reverb import rate_limiters
import tensorflow as tf

from iql_acme import actors
from iql_acme import compat
from iql_acme import learning
from iql_acme.config import IQLConfig
from iql_acme.networks import IQLNetworks
from iql_acme.types import RewardTransform, Transitions

compat.patch_reverb_client()

# Loads the offline dataset inside the learner's process (so the arrays are
# never pickled into every Launchpad node); must be picklable.
OfflineDatasetFn = Callable[[], Tuple[Transitions, RewardTransform]]


# How long the learner waits on replay before checking for a stop request.
REPLAY_POLL_S = 0.1
# Inserts an actor may have unconfirmed (Acme's adders' default).
MAX_IN_FLIGHT_ITEMS = 5


class InterruptibleIterator:
  """Pulls from a blocking iterator in a daemon thread.

  Reverb's rate limiter parks the learner inside tf.data's C++ `next()`
  whenever it is ahead of the actors. Launchpad (and Acme's runners) stop a
  node by raising SystemExit asynchronously in its thread, which only lands
  while Python code runs; waiting here in short slices keeps the learner
  stoppable. At most one batch waits in the queue, so pacing is unaffected.
  """

  def __init__(self, iterator: Iterator, poll_s: float = REPLAY_POLL_S):
    self._queue = queue.Queue(maxsize=1)
    self._poll_s = poll_s
    thread = threading.Thread(target=self._produce, args=(iterator,),
                              daemon=True)
    thread.start()

  def _produce(self, iterator):
    try:
      for item in iterator:
        self._queue.put(item)
    except Exception as e:  # pylint: disable=broad-except
      self._queue.put(_Failure(e))
    self._queue.put(_Failure(StopIteration()))

  def __iter__(self):
    return self

  def __next__(self):
    while True:
      try:
        item = self._queue.get(timeout=self._poll_s)
      except queue.Empty:
        continue
      if isinstance(item, _Failure):
        self._queue.put(item)  # Keep failing on later calls too.
        raise item.error
      return item


class _Failure(NamedTuple):
  error: BaseException


def samples_per_insert(config: IQLConfig) -> float:
  """Each update samples one replay batch; one insert is one env step."""
  return config.batch_size * config.updates_per_env_step


def make_rate_limiter(config: IQLConfig) -> rate_limiters.RateLimiter:
  """Paces updates to environment steps at config.updates_per_env_step.

  Reverb blocks whichever side runs more than `rate_limit_tolerance_steps`
  updates ahead of the other. The buffer must hold at least the samples in
  flight (one batch being consumed plus the dataset's in-flight batch).
  """
  spi = samples_per_insert(config)
  tolerance = max(config.rate_limit_tolerance_steps, 4) * config.batch_size
  fetch = config.batch_size * config.num_sgd_steps_per_step  # One learner step.
  return rate_limiters.SampleToInsertRatio(
      samples_per_insert=spi, min_size_to_sample=config.min_replay_size,
      error_buffer=max(tolerance, 2 * fetch, 2 * spi))


def replay_signature(environment_spec: specs.EnvironmentSpec) -> tf.TensorSpec:
  """One float32 row per transition (layout: `learning.transition_row`)."""
  size = learning.transition_row_size(
      int(np.prod(environment_spec.observations.shape)),
      int(np.prod(environment_spec.actions.shape)))
  return tf.TensorSpec([size], tf.float32, name='transition')


class TransitionRowAdder(adders.Adder):
  """Inserts each transition (s, a, r, discount, s') as one replay row.

  The stored discount is the environment's (0 at a terminal, 1 at a
  time-limit cut), i.e. the mask of eq. (6), as for offline data; what
  Acme's NStepTransitionAdder stores with n_step=1, in one column.
  """

  def __init__(self, client: reverb.Client, table: str,
               max_in_flight_items: int = MAX_IN_FLIGHT_ITEMS):
    self._client, self._table = client, table
    self._max_in_flight_items = max_in_flight_items
    self._writer = None
    self._observation = None

  def add_first(self, timestep):
    if not timestep.first():
      raise ValueError('add_first needs the first timestep of an episode')
    self._observation = timestep.observation

  def add(self, action, next_timestep, extras=()):
    del extras  # The IQL policy has none.
    if self._observation is None:
      raise ValueError('add_first must be called before add')
    if self._writer is None:
      self._writer = self._client.trajectory_writer(num_keep_alive_refs=1)
    self._writer.append(learning.transition_row(
        self._observation, action, next_timestep.reward,
        next_timestep.discount, next_timestep.observation))
    self._writer.create_item(self._table, 1.0, self._writer.history[-1])
    # Blocks while Reverb's rate limiter holds the inserts: the pacing.
    self._writer.flush(self._max_in_flight_items)
    self._observation = next_timestep.observation
    if next_timestep.last():
      self.reset()  # As Acme's adders: a finished episode is all in replay.

  def flush(self):
    """Returns once every added transition is in replay."""
    if self._writer is not None:
      self._writer.flush()

  def reset(self):
    self.flush()
    self._observation = None


class IQLBuilder(builders.ActorLearnerBuilder):
  """Builds IQL's replay table, adder, dataset iterator, actors and learner."""

  def __init__(self,
               config: IQLConfig,
               offline_dataset_fn: OfflineDatasetFn,
               logger_fn: Callable[[], Optional[loggers.Logger]] = lambda: None):
    self._config = config
    self._offline_dataset_fn = offline_dataset_fn
    self._logger_fn = logger_fn

  @property
  def config(self) -> IQLConfig:
    return self._config

  def make_replay_tables(
      self, environment_spec: specs.EnvironmentSpec) -> List[reverb.Table]:
    return [reverb.Table(
        name=self._config.replay_table_name,
        sampler=reverb.selectors.Uniform(),
        remover=reverb.selectors.Fifo(),
        max_size=self._config.max_replay_size,
        rate_limiter=make_rate_limiter(self._config),
        signature=replay_signature(environment_spec))]

  def make_dataset_iterator(
      self, replay_client: reverb.Client) -> Iterator[reverb.ReplaySample]:
    # One worker and one fetch in flight keep the pacing tight: each learner
    # step takes num_sgd_steps_per_step batches granted by the rate limiter.
    rows = self._config.batch_size * self._config.num_sgd_steps_per_step
    dataset = datasets.make_reverb_dataset(
        table=self._config.replay_table_name,
        server_address=replay_client.server_address,
        batch_size=rows,
        prefetch_size=self._config.prefetch_size,
        num_parallel_calls=1,
        max_in_flight_samples_per_worker=rows)
    return InterruptibleIterator(dataset.as_numpy_iterator())

  def make_adder(self, replay_client: reverb.Client) -> Optional[adders.Adder]:
    return TransitionRowAdder(replay_client, self._config.replay_table_name)

  def make_actor(self,
                 random_key: networks_lib.PRNGKey,
                 policy_network,
                 adder: Optional[adders.Adder] = None,
                 variable_source: Optional[core.VariableSource] = None
                 ) -> core.Actor:
    if variable_source is None:
      raise ValueError('IQLBuilder.make_actor needs a variable_source (the '
                       'learner) to fetch policy parameters from')
    return actors.make_actor(self._config, policy_network, random_key,
                             variable_source, adder)

  def make_learner(self,
                   random_key: networks_lib.PRNGKey,
                   networks: IQLNetworks,
                   dataset: Iterator[reverb.ReplaySample],
                   replay_client: Optional[reverb.Client] = None,
                   counter: Optional[counting.Counter] = None
                   ) -> learning.IQLLearner:
    offline_data, reward_transform = self._offline_dataset_fn()
    return learning.IQLLearner(
        networks=networks, config=self._config, random_key=random_key,
        offline_data=offline_data, replay_iterator=dataset,
        reward_transform=reward_transform, counter=counter,
        logger=self._logger_fn())
