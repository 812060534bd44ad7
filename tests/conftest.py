"""Shared fixtures: small real datasets, written in the real formats."""

import os

import numpy as np
import pytest

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from iql_acme import envs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.types import Transitions  # pylint: disable=g-import-not-at-top,wrong-import-position


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


@pytest.fixture(scope='session')
def pen_random_npz(tmp_path_factory) -> str:
  """A plain .npz of 1,000 random-policy pen-binary-v0 transitions."""
  from iql_acme.data import save_npz  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('data') / 'pen_random.npz')
  save_npz(path, random_policy_transitions('pen-binary-v0', episodes=10))
  return path
