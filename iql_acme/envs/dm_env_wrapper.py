"""dm_env view of a gymnasium env (Acme's GymWrapper is for the old gym)."""

from typing import Any, Dict, Optional

import dm_env
from dm_env import specs
import gymnasium
import numpy as np

# Everything the agent sees or sends is single precision.
_DTYPE = np.float32
_DISCOUNT_CONTINUE = _DTYPE(1.0)
_DISCOUNT_TERMINAL = _DTYPE(0.0)


class GymnasiumToDmEnv(dm_env.Environment):
  """Turns a gymnasium (>=0.26 API) environment into a dm_env.Environment.

  * Observations, actions, rewards and discounts are float32.
  * `terminated` ends the episode with discount 0 (a true terminal state);
    `truncated` (a time-limit cut) ends it with discount 1, so bootstrapping
    continues through it.
  * The first `reset()` seeds the environment with `seed`; later resets
    continue its random stream.
  * `step()` after a LAST step starts a new episode, as Acme expects.
  * `last_info` is the info dict of the latest reset or step.
  """

  def __init__(self, environment: gymnasium.Env, seed: Optional[int] = None,
               max_episode_steps: Optional[int] = None):
    self._environment = environment
    self._seed = seed
    self._seeded = False
    self._reset_next_step = True
    self._last_info: Dict[str, Any] = {}
    if max_episode_steps is None and environment.spec is not None:
      max_episode_steps = environment.spec.max_episode_steps
    self._max_episode_steps = max_episode_steps
    self._observation_spec = _observation_spec(environment.observation_space)
    self._action_spec = _action_spec(environment.action_space)
    self._action_shape = self._action_spec.shape

  def reseed(self, seed: int):
    """The next `reset()` seeds the environment with `seed` (and so starts
    from the same initial state and goal every time it is given)."""
    self._seed, self._seeded = seed, False

  def reset(self) -> dm_env.TimeStep:
    if self._seeded:
      observation, info = self._environment.reset()
    else:
      observation, info = self._environment.reset(seed=self._seed)
      self._seeded = True
    self._reset_next_step = False
    self._last_info = info
    return dm_env.restart(np.asarray(observation, dtype=_DTYPE))

  def step(self, action) -> dm_env.TimeStep:
    if self._reset_next_step:
      return self.reset()
    action = np.asarray(action, dtype=_DTYPE)
    if action.shape != self._action_shape:
      raise ValueError(f'action has shape {action.shape} but the action spec '
                       f'wants {self._action_shape}; pass one unbatched action')
    observation, reward, terminated, truncated, info = self._environment.step(
        action)
    self._last_info = info
    observation = np.asarray(observation, dtype=_DTYPE)
    reward = _DTYPE(reward)
    if terminated:
      self._reset_next_step = True
      return dm_env.TimeStep(dm_env.StepType.LAST, reward, _DISCOUNT_TERMINAL,
                             observation)
    if truncated:
      self._reset_next_step = True
      return dm_env.TimeStep(dm_env.StepType.LAST, reward, _DISCOUNT_CONTINUE,
                             observation)
    return dm_env.TimeStep(dm_env.StepType.MID, reward, _DISCOUNT_CONTINUE,
                           observation)

  def observation_spec(self) -> specs.Array:
    return self._observation_spec

  def action_spec(self) -> specs.BoundedArray:
    return self._action_spec

  def reward_spec(self) -> specs.Array:
    return specs.Array(shape=(), dtype=_DTYPE, name='reward')

  def discount_spec(self) -> specs.BoundedArray:
    return specs.BoundedArray(shape=(), dtype=_DTYPE, minimum=0.0, maximum=1.0,
                              name='discount')

  @property
  def last_info(self) -> Dict[str, Any]:
    """The info dict returned by the latest reset or step."""
    return self._last_info

  @property
  def max_episode_steps(self) -> Optional[int]:
    """Steps after which an episode is truncated (None: no time limit)."""
    return self._max_episode_steps

  @property
  def environment(self) -> gymnasium.Env:
    """The wrapped gymnasium environment."""
    return self._environment

  def close(self):
    self._environment.close()


def _observation_spec(space: gymnasium.Space) -> specs.Array:
  if not isinstance(space, gymnasium.spaces.Box):
    raise ValueError(f'observation space {space} is not a flat Box; wrap the '
                     'environment to flatten it first')
  return specs.Array(shape=space.shape, dtype=_DTYPE, name='observation')


def _action_spec(space: gymnasium.Space) -> specs.BoundedArray:
  if not isinstance(space, gymnasium.spaces.Box):
    raise ValueError(f'action space {space} is not a continuous Box; only '
                     'continuous control is supported')
  return specs.BoundedArray(shape=space.shape, dtype=_DTYPE,
                            minimum=space.low.astype(_DTYPE),
                            maximum=space.high.astype(_DTYPE), name='action')
