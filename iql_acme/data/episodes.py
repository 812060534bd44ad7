"""Where trajectories end in a flat list of transitions."""

import numpy as np

# Row i ends a trajectory when row i+1 does not start where row i ended
# (the same test and tolerance as the original IQL code's `dones_float`).
OBS_MATCH_TOLERANCE = 1e-6


def episode_ends_from(observations: np.ndarray,
                      next_observations: np.ndarray, *flags) -> np.ndarray:
  """[N] bool: a flag is set, the next row does not continue, or last row."""
  n = len(observations)
  ends = np.zeros(n, dtype=bool)
  for flag in flags:
    ends |= np.asarray(flag, dtype=bool)
  if n > 1:
    gap = np.linalg.norm(observations[1:] - next_observations[:-1], axis=-1)
    ends[:-1] |= gap > OBS_MATCH_TOLERANCE
  if n:
    ends[-1] = True
  return ends


def episode_starts(episode_ends: np.ndarray) -> np.ndarray:
  """Index of the first row of each trajectory."""
  if not len(episode_ends):
    return np.zeros(0, dtype=np.int64)
  return np.concatenate([[0], np.flatnonzero(episode_ends[:-1]) + 1])
