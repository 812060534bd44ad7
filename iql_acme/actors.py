"""The IQL actor: Acme's GenericActor that sits out the offline phase."""

import time
from typing import Optional

from absl import logging
from acme import adders
from acme import core
from acme.agents.jax import actor_core as actor_core_lib
from acme.agents.jax import actors
from acme.jax import variable_utils
import numpy as np

from iql_acme import learning
from iql_acme.config import IQLConfig

# How often a waiting actor asks the learner whether the offline phase is over.
OFFLINE_PHASE_POLL_S = 0.5


def wait_for_online_phase(variable_source: core.VariableSource,
                          offline_steps: int,
                          poll_s: float = OFFLINE_PHASE_POLL_S) -> int:
  """Blocks until the learner has done `offline_steps` updates; returns them.

  When the source is the learner itself, in this process (Acme's
  LocalLayout), nothing else would train it: the offline phase runs here.
  """
  if isinstance(variable_source, learning.IQLLearner):
    while variable_source.steps < offline_steps:
      variable_source.step()
    return variable_source.steps
  while True:
    (learner_steps,) = variable_source.get_variables(['learner_steps'])
    if int(np.asarray(learner_steps)) >= offline_steps:
      return int(np.asarray(learner_steps))
    time.sleep(poll_s)


class IQLActor(actors.GenericActor):
  """Acts with the learner's policy; with an adder, only after offline training.

  An actor that records data (has an adder) first waits for the learner to
  finish its offline phase, so no transition from an untrained policy reaches
  replay; then it fetches the trained parameters before its first action.
  The evaluator's actor (no adder) acts at any time.
  """

  def __init__(self, policy, random_key, variable_source: core.VariableSource,
               adder: Optional[adders.Adder], offline_steps: int,
               update_period: int):
    self._variable_source = variable_source
    self._offline_steps = offline_steps
    self._ready = False
    self.learner_steps_at_first_action: Optional[int] = None
    client = variable_utils.VariableClient(
        variable_source, 'policy', update_period=update_period, device='cpu')
    super().__init__(actor_core_lib.batched_feed_forward_to_actor_core(policy),
                     random_key, client, adder, backend='cpu')

  def observe_first(self, timestep):
    if not self._ready:
      if self._adder is not None:
        logging.info('actor waiting for the learner to finish %d offline '
                     'steps', self._offline_steps)
        self.learner_steps_at_first_action = wait_for_online_phase(
            self._variable_source, self._offline_steps)
      self._variable_client.update_and_wait()  # Parameters before acting.
      self._ready = True
    super().observe_first(timestep)


def make_actor(config: IQLConfig, policy, random_key,
               variable_source: core.VariableSource,
               adder: Optional[adders.Adder] = None) -> IQLActor:
  return IQLActor(policy, random_key, variable_source, adder,
                  offline_steps=config.offline_steps,
                  update_period=config.variable_update_period)
