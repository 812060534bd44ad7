"""The one in-memory transition format shared by loaders, learner and replay."""

import dataclasses
from typing import NamedTuple

import numpy as np


class Transitions(NamedTuple):
  """A flat batch of N transitions (numpy on the host, jax arrays on device).

  `discounts` is the mask of the paper's eq. (6): 0 where s' is terminal, 1
  otherwise (a time-limit cut is *not* terminal). `episode_ends` is True on the
  last transition of each trajectory (terminal, time-out or data break); it is
  bookkeeping for loaders and stand-in generators, never used in the loss.
  """
  observations: np.ndarray       # [N, obs_dim] float32
  actions: np.ndarray            # [N, act_dim] float32, within +-(1 - 1e-5)
  rewards: np.ndarray            # [N] float32, reward transform applied
  discounts: np.ndarray          # [N] float32 in {0, 1}
  next_observations: np.ndarray  # [N, obs_dim] float32
  episode_ends: np.ndarray       # [N] bool

  @property
  def size(self) -> int:
    """Number of transitions (not len(): that is the tuple's field count)."""
    return int(self.rewards.shape[0])


@dataclasses.dataclass(frozen=True)
class RewardTransform:
  """r' = scale * r + shift, the paper's per-domain reward preprocessing.

  Loaders return the transform they applied so the online phase applies
  exactly the same one to fresh transitions (appendix B).
  """
  scale: float = 1.0
  shift: float = 0.0

  def __call__(self, rewards):
    return rewards * self.scale + self.shift
