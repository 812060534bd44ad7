"""The IQL actor: Acme's GenericActor that sits out the offline phase."""

import time
from typing import Optional

from absl import logging
from acme import adders
from acme import core
from acme.agents.jax import actor_core as actor_core_lib
from acme.agents.jax import actors
from acme.jax import variable_utils
import jax
import numpy as np

from iql_acme import learning
from iql_acme import networks as iql_networks
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


def policy_mean(params, observation: np.ndarray) -> np.ndarray:
  """`GaussianPolicy`'s mean, tanh(MLP(s)), in numpy (inference: no dropout)."""
  mlp = params['params']['MLP_0']
  x = observation
  for i in range(len(mlp)):
    layer = mlp[f'Dense_{i}']
    # einsum, not `@`: numpy's OpenBLAS would hand a matmul this small to
    # a worker thread that then busy-waits (~10 ms of CPU per call when
    # actions are 10 ms apart); einsum's own loop uses no threads.
    x = np.einsum('...i,ij->...j', x, layer['kernel']) + layer['bias']
    if i < len(mlp) - 1:
      x = np.maximum(x, 0.0)
  return np.tanh(x)


class NumpyPolicyActor(IQLActor):
  """IQLActor whose behaviour policy runs in numpy on the host.

  For one observation of the small MLP a jax call is dominated by dispatch:
  ~0.45 ms per step against ~0.05 ms in numpy (benchmarks/bench_system.py),
  CPU taken from the learner on the same cores. Same policy as
  `networks.make_behaviour_policy`: clip(mean + N(0, noise^2), bounds).
  """

  def __init__(self, policy, random_key, variable_source, adder,
               offline_steps: int, update_period: int,
               exploration_noise: float, action_minimum, action_maximum):
    super().__init__(policy, random_key, variable_source, adder,
                     offline_steps, update_period)
    self._noise = np.float32(exploration_noise)
    self._bounds = (np.asarray(action_minimum, np.float32),
                    np.asarray(action_maximum, np.float32))
    self._rng = np.random.default_rng(np.asarray(random_key))
    self._fetched = self._numpy_params = None

  def select_action(self, observation):
    params = self._variable_client.params
    if params is not self._fetched:  # Converted once per parameter fetch.
      self._fetched = params
      self._numpy_params = jax.tree_util.tree_map(np.asarray, params)
    mean = policy_mean(self._numpy_params, np.asarray(observation, np.float32))
    noise = self._noise * self._rng.standard_normal(mean.shape, np.float32)
    return np.clip(mean + noise, *self._bounds)


def make_numpy_actor(config: IQLConfig, networks, random_key,
                     variable_source: core.VariableSource,
                     adder: Optional[adders.Adder] = None) -> NumpyPolicyActor:
  """The behaviour policy of `networks` as a numpy actor (see above)."""
  return NumpyPolicyActor(
      iql_networks.make_behaviour_policy(networks, config), random_key,
      variable_source, adder, offline_steps=config.offline_steps,
      update_period=config.variable_update_period,
      exploration_noise=config.exploration_noise,
      action_minimum=networks.action_minimum,
      action_maximum=networks.action_maximum)


def make_actor(config: IQLConfig, policy, random_key,
               variable_source: core.VariableSource,
               adder: Optional[adders.Adder] = None) -> IQLActor:
  return IQLActor(policy, random_key, variable_source, adder,
                  offline_steps=config.offline_steps,
                  update_period=config.variable_update_period)
