"""Writers of AWAC's hand-data layout (rlkit path dicts pickled in .npy).

The published files are `{task}2_sparse.npy` (expert demos) and
`{task}_bc_sparse4.npy` (noisy BC rollouts); both are pickled lists of path
dicts with `observations, actions, rewards, next_observations, terminals,
agent_infos, env_infos`. The two differ in detail, and these writers keep the
differences, so loaders meet the real layouts:

* demos: `(next_)observations` are lists of dicts holding the state under both
  `observation` and `state_observation`; `rewards` is a list with one extra
  trailing entry; `terminals` a list of bools.
* BC rollouts: plain [T, dim] arrays, `rewards` and `terminals` shaped [T, 1],
  `env_infos` holding `goal_achieved`, `env_reward` and `TimeLimit.truncated`.

Deviations, on purpose: `terminals` are all False here (these tasks never
terminate; the real BC file marks its time-limit step as terminal, old Gym's
`done`), and the demo `env_infos` hold `goal_achieved` (empty in the real
file). Arrays are float32 to keep the committed files small.
"""

import os
from typing import List, Sequence

import numpy as np

REWARD_SUCCESS = 0.0   # binary reward: goal_achieved - 1
REWARD_FAILURE = -1.0
PATH_KEYS = ('observations', 'actions', 'rewards', 'next_observations',
             'terminals', 'agent_infos', 'env_infos')


def binary_rewards(goal_achieved: np.ndarray) -> np.ndarray:
  return np.where(np.asarray(goal_achieved, bool), REWARD_SUCCESS,
                  REWARD_FAILURE).astype(np.float32)


def demo_path(observations: np.ndarray, actions: np.ndarray,
              next_observations: np.ndarray,
              goal_achieved: np.ndarray) -> dict:
  """A path in the demo layout of `pen2_sparse.npy`."""
  observations = np.asarray(observations, np.float32)
  next_observations = np.asarray(next_observations, np.float32)
  goal_achieved = np.asarray(goal_achieved, bool)
  steps = len(actions)
  def as_dicts(rows):
    # One array object under both keys: pickle stores it once.
    return [{'observation': row, 'state_observation': row} for row in rows]
  rewards = list(binary_rewards(goal_achieved))
  rewards.append(rewards[-1])  # the real demos carry one extra reward
  return {
      'observations': as_dicts(observations),
      'actions': list(np.asarray(actions, np.float32)),
      'rewards': rewards,
      'next_observations': as_dicts(next_observations),
      'terminals': [False] * steps,
      'agent_infos': [{} for _ in range(steps)],
      'env_infos': [{'goal_achieved': bool(g)} for g in goal_achieved],
  }


def bc_path(observations: np.ndarray, actions: np.ndarray,
            next_observations: np.ndarray, goal_achieved: np.ndarray,
            env_rewards: np.ndarray, truncated: bool = True) -> dict:
  """A path in the rollout layout of `pen_bc_sparse4.npy`."""
  steps = len(actions)
  goal_achieved = np.asarray(goal_achieved, bool)
  env_infos = [{'goal_achieved': bool(g), 'env_reward': float(r),
                'TimeLimit.truncated': False}
               for g, r in zip(goal_achieved, env_rewards)]
  env_infos[-1]['TimeLimit.truncated'] = bool(truncated)
  return {
      'observations': np.asarray(observations, np.float32),
      'actions': np.asarray(actions, np.float32),
      'rewards': binary_rewards(goal_achieved)[:, None],
      'next_observations': np.asarray(next_observations, np.float32),
      'terminals': np.zeros((steps, 1), bool),
      'agent_infos': [{} for _ in range(steps)],
      'env_infos': env_infos,
  }


def save_paths(file: str, paths: Sequence[dict]):
  """Pickles `paths` as AWAC does, atomically (write, then rename)."""
  array = np.empty(len(paths), dtype=object)
  array[:] = list(paths)
  tmp = file + '.tmp'
  with open(tmp, 'wb') as f:
    np.save(f, array, allow_pickle=True)
  os.replace(tmp, file)


def load_paths(file: str) -> List[dict]:
  return list(np.load(file, allow_pickle=True))


def path_arrays(path: dict):
  """(observations, actions, rewards[T], next_observations) of either layout."""
  def rows(values):
    if isinstance(values, np.ndarray) and values.dtype != object:
      return values
    return np.stack([v['state_observation'] if isinstance(v, dict) else v
                     for v in values])
  actions = rows(path['actions'])
  rewards = np.asarray(path['rewards'], np.float32).reshape(-1)[:len(actions)]
  return (rows(path['observations']), actions, rewards,
          rows(path['next_observations']))
