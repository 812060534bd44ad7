"""Per-domain reward preprocessing (paper, appendix B) and action clipping."""

import numpy as np

from iql_acme.config import PRESETS
from iql_acme.data.episodes import episode_starts
from iql_acme.data.errors import dataset_error
from iql_acme.types import RewardTransform, Transitions

# Dataset actions are clipped into the open interval so the tanh-squashed
# policy's log-likelihood stays finite (the original IQL code's clip_to_eps).
ACTION_CLIP_LIMIT = 1.0 - 1e-5
# Locomotion rewards are scaled so the best and worst trajectory returns of
# the dataset are this far apart.
LOCOMOTION_RETURN_RANGE = 1000.0
# AntMaze (and the maze2d stand-in): r - 1, as the dataset authors suggest.
ANTMAZE_REWARD_SHIFT = -1.0
# Domains whose rewards are used as they are (Adroit, Kitchen, binary hands).
UNCHANGED_DOMAINS = ('kitchen', 'adroit', 'hand_finetune')


def clip_actions(actions: np.ndarray) -> np.ndarray:
  return np.clip(actions, -ACTION_CLIP_LIMIT, ACTION_CLIP_LIMIT)


def trajectory_returns(rewards: np.ndarray,
                       episode_ends: np.ndarray) -> np.ndarray:
  """Undiscounted return of each trajectory (split after each episode end)."""
  if not len(rewards):
    return np.zeros(0)
  return np.add.reduceat(np.asarray(rewards, np.float64),
                         episode_starts(np.asarray(episode_ends, bool)))


def reward_transform_for(domain: str, transitions: Transitions, *,
                         source='dataset') -> RewardTransform:
  """The paper's reward transform for `domain`, computed on raw rewards."""
  if domain not in PRESETS:
    raise ValueError(f'unknown domain {domain!r}; choose one of '
                     f'{sorted(PRESETS)}')
  if domain == 'antmaze':
    return RewardTransform(scale=1.0, shift=ANTMAZE_REWARD_SHIFT)
  if domain in UNCHANGED_DOMAINS:
    return RewardTransform()
  if domain != 'locomotion':
    raise ValueError(f'no reward transform is defined for domain {domain!r}')
  returns = trajectory_returns(transitions.rewards, transitions.episode_ends)
  spread = float(returns.max() - returns.min()) if len(returns) else 0.0
  if spread <= 0.0:
    raise dataset_error(source, f'all {len(returns)} trajectories have the '
                        'same return, so the locomotion reward scale '
                        '1000 / (max - min return) is undefined', 'use a '
                        'dataset with more than one distinct trajectory '
                        'return, or another domain')
  return RewardTransform(scale=LOCOMOTION_RETURN_RANGE / spread, shift=0.0)


def apply_reward_transform(transitions: Transitions,
                           transform: RewardTransform) -> Transitions:
  rewards = np.asarray(transform(transitions.rewards), dtype=np.float32)
  return with_fields(transitions, rewards=rewards)


def with_fields(transitions: Transitions, **fields) -> Transitions:
  """A copy with `fields` replaced.

  Not `_replace`: Transitions overrides `__len__` (number of transitions),
  which breaks namedtuple's `_make` unless N happens to be 6.
  """
  return Transitions(**{**transitions._asdict(), **fields})
