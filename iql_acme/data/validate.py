"""Shape, length, size and finiteness checks shared by every loader."""

from typing import Mapping, Optional, Sequence

import numpy as np

from iql_acme.data.errors import dataset_error
from iql_acme.types import Transitions

_FLOAT_FIELDS = ('observations', 'actions', 'rewards', 'next_observations')


def require_keys(present: Sequence[str], required: Sequence[str], source,
                 fix: str) -> None:
  """Raises naming every required key that `present` lacks."""
  missing = [k for k in required if k not in present]
  if missing:
    raise dataset_error(
        source, f'missing required key(s) {missing} (found {sorted(present)})',
        fix)


def as_matrix(value, key: str, source) -> np.ndarray:
  """`value` as a float32 [N, dim] array; any other rank is an error."""
  try:
    array = np.asarray(value, dtype=np.float32)
  except (TypeError, ValueError) as e:
    raise dataset_error(source, f'{key} is not a numeric array ({e})',
                        f'store {key} as a float array of shape [N, dim]')
  if array.ndim != 2:
    raise dataset_error(source, f'{key} has shape {array.shape}, expected '
                        '[N, dim]', f'store {key} as a 2-D array, one row per '
                        'step')
  return array


def as_vector(value, key: str, source, dtype=np.float32) -> np.ndarray:
  """`value` as an [N] array of `dtype`.

  An [N, 1] column is accepted and flattened (some files store rewards and
  terminals that way); every other shape is an error.
  """
  try:
    array = np.asarray(value)
  except (TypeError, ValueError) as e:
    raise dataset_error(source, f'{key} is not a numeric array ({e})',
                        f'store {key} as a 1-D array of length N')
  if array.ndim == 2 and array.shape[1] == 1:
    array = array[:, 0]
  if array.ndim != 1:
    raise dataset_error(source, f'{key} has shape {array.shape}, expected [N]',
                        f'store {key} as a 1-D array, one entry per step')
  if dtype is bool:
    try:
      return array.astype(bool)
    except (TypeError, ValueError) as e:
      raise dataset_error(source, f'{key} is not boolean ({e})',
                          f'store {key} as 0/1 or bool values')
  try:
    return array.astype(dtype)
  except (TypeError, ValueError) as e:
    raise dataset_error(source, f'{key} is not numeric ({e})',
                        f'store {key} as numbers')


def check_same_length(arrays: Mapping[str, np.ndarray], source,
                      where: str = '') -> int:
  """Returns the common length of `arrays`, or raises listing all lengths."""
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) > 1:
    listed = ', '.join(f'{k} {n}' for k, n in lengths.items())
    raise dataset_error(source, f'arrays have different lengths{where}: '
                        f'{listed}', 'every per-step array must have one entry '
                        'per transition; re-export the dataset')
  return next(iter(lengths.values()), 0)


def check_transitions(transitions: Transitions, source,
                      obs_dim: Optional[int] = None,
                      act_dim: Optional[int] = None) -> None:
  """Checks a finished `Transitions`: non-empty, consistent, finite, sized."""
  n = transitions.size
  if n == 0:
    raise dataset_error(source, 'dataset is empty (0 transitions)',
                        'check that the file holds the data you expect')
  check_same_length(transitions._asdict(), source)
  obs, next_obs = transitions.observations, transitions.next_observations
  if obs.ndim != 2 or next_obs.shape != obs.shape:
    raise dataset_error(source, f'observations {obs.shape} and '
                        f'next_observations {next_obs.shape} differ in shape',
                        'both must be [N, obs_dim]')
  if obs_dim is not None and obs.shape[1] != obs_dim:
    raise dataset_error(source, f'observation size {obs.shape[1]} does not '
                        f'match the environment ({obs_dim})', 'use the dataset '
                        'recorded in this environment (or the matching task)')
  if act_dim is not None and transitions.actions.shape[1] != act_dim:
    raise dataset_error(source, f'action size {transitions.actions.shape[1]} '
                        f'does not match the environment ({act_dim})', 'use '
                        'the dataset recorded in this environment (or the '
                        'matching task)')
  check_finite({k: v for k, v in transitions._asdict().items()
                if k in _FLOAT_FIELDS}, source)


def check_finite(arrays: Mapping[str, np.ndarray], source) -> None:
  """Raises naming each array with NaN or inf values and how many it has."""
  bad = {}
  for key, value in arrays.items():
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
      count = int(value.size - np.count_nonzero(np.isfinite(value)))
      if count:
        bad[key] = count
  if bad:
    listed = ', '.join(f'{k} has {count}' for k, count in bad.items())
    raise dataset_error(source, f'non-finite values (NaN or inf): {listed}',
                        'clean or drop those rows and re-save the dataset')
