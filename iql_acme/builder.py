"""IQLBuilder: offline-to-online IQL as an Acme `ActorLearnerBuilder`.

Works with Acme 0.4.0's own `DistributedLayout` / `LocalLayout` and with the
project's Launchpad program (`iql_acme/program.py`).
"""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from acme import adders
from acme import core
from acme import specs
from acme.agents.jax import builders
from acme.jax import networks as networks_lib
from acme.utils import counting
from acme.utils import loggers
import numpy as np
import reverb
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


# Inserts an actor may have unconfirmed (Acme's adders' default).
MAX_IN_FLIGHT_ITEMS = 5
QUEUE_SUFFIX = '_queue'


def queue_table_name(config: IQLConfig) -> str:
  """The table the learner takes new transitions from, each once."""
  return config.replay_table_name + QUEUE_SUFFIX


class ReplayQueueReader:
  """Takes the new transitions from the replay queue, each exactly once.

  `next()` returns the rows waiting in the queue (at most `max_rows`, none
  if it is empty) without blocking. It asks Reverb for exactly the rows it
  saw waiting, so no row is ever in flight between Reverb and the learner:
  whatever the queue no longer holds, the learner has (a checkpoint of
  both, with the learner held, loses and duplicates nothing).
  """

  def __init__(self, client: reverb.Client, table: str, max_rows: int):
    self._client, self._table, self._max_rows = client, table, max_rows

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    waiting = self._client.server_info()[self._table].current_size
    num = min(int(waiting), self._max_rows)
    if num == 0:
      return np.zeros((0, 0), np.float32)
    samples = self._client.sample(self._table, num_samples=num,
                                  emit_timesteps=False)
    return np.stack([np.asarray(sample.data[0]) for sample in samples])


def replay_signature(environment_spec: specs.EnvironmentSpec) -> tf.TensorSpec:
  """One float32 row per transition (layout: `learning.transition_row`)."""
  size = learning.transition_row_size(
      int(np.prod(environment_spec.observations.shape)),
      int(np.prod(environment_spec.actions.shape)))
  return tf.TensorSpec([size], tf.float32, name='transition')


class TransitionRowAdder(adders.Adder):
  """Inserts each transition (s, a, r, discount, s') as one replay row.

  The row goes into every table in `tables` (one copy of the data, one item
  per table): the replay table and the learner's queue. An insert blocks
  while the queue is full: the pacing.

  The stored discount is the environment's (0 at a terminal, 1 at a
  time-limit cut), i.e. the mask of eq. (6), as for offline data; what
  Acme's NStepTransitionAdder stores with n_step=1, in one column.
  """

  def __init__(self, client: reverb.Client, tables: Sequence[str],
               max_in_flight_items: int = MAX_IN_FLIGHT_ITEMS):
    self._client, self._tables = client, tuple(tables)
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
    for table in self._tables:
      self._writer.create_item(table, 1.0, self._writer.history[-1])
    # Blocks while the learner's queue is full: the pacing.
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
    """The replay (every transition, for checkpoints and counts) and the
    learner's queue (each new transition until the learner takes it)."""
    signature = replay_signature(environment_spec)
    return [
        reverb.Table(
            name=self._config.replay_table_name,
            sampler=reverb.selectors.Uniform(),
            remover=reverb.selectors.Fifo(),
            max_size=self._config.max_replay_size,
            rate_limiter=reverb.rate_limiters.MinSize(1),
            signature=signature),
        reverb.Table.queue(
            name=queue_table_name(self._config),
            max_size=learning.replay_queue_size(self._config),
            signature=signature)]

  def make_dataset_iterator(
      self, replay_client: reverb.Client) -> Iterator[np.ndarray]:
    return ReplayQueueReader(replay_client, queue_table_name(self._config),
                             learning.replay_queue_size(self._config))

  def make_adder(self, replay_client: reverb.Client) -> Optional[adders.Adder]:
    return TransitionRowAdder(replay_client, [
        self._config.replay_table_name, queue_table_name(self._config)])

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
                   dataset: Iterator[np.ndarray],
                   replay_client: Optional[reverb.Client] = None,
                   counter: Optional[counting.Counter] = None
                   ) -> learning.IQLLearner:
    offline_data, reward_transform = self._offline_dataset_fn()
    return learning.IQLLearner(
        networks=networks, config=self._config, random_key=random_key,
        offline_data=offline_data, replay_iterator=dataset,
        reward_transform=reward_transform, counter=counter,
        logger=self._logger_fn())
