"""Real environment transitions for tests (a module of its own: a test that
imported them from `conftest` would get tests/core/conftest.py instead)."""

import numpy as np

from iql_acme import envs
from iql_acme.types import Transitions


def random_policy_transitions(env_name: str, episodes: int,
                              seed: int = 0) -> Transitions:
  """Real environment transitions from a uniformly random policy."""
  env = envs.make_environment(env_name, seed)
  spec = env.action_spec()
  rng = np.random.default_rng(seed)
  rows = {k: [] for k in Transitions._fields}
  for _ in range(episodes):
    timestep = env.reset()
    while not timestep.last():
      action = rng.uniform(spec.minimum, spec.maximum).astype(np.float32)
      next_timestep = env.step(action)
      rows['observations'].append(timestep.observation)
      rows['actions'].append(action)
      rows['rewards'].append(next_timestep.reward)
      rows['discounts'].append(next_timestep.discount)
      rows['next_observations'].append(next_timestep.observation)
      rows['episode_ends'].append(next_timestep.last())
      timestep = next_timestep
  return Transitions(**{k: np.asarray(v) for k, v in rows.items()})
