"""AWAC's dexterous-hand data (pen/door/relocate-binary) in rlkit .npy files.

Each file is a pickled list of rlkit path dicts with `observations, actions,
rewards, next_observations, terminals, agent_infos, env_infos`:
`{task}2_sparse.npy` holds expert demos whose (next_)observations are lists of
dicts (the state vector is under `state_observation`), `{task}_bc_sparse4.npy`
holds BC-policy rollouts with plain arrays. Rewards are the binary tasks' 0/-1
and are kept as they are.

Two explicit conventions:
  * A demo path's `rewards` may have one more entry than `actions`; exactly
    that one trailing entry is dropped (rlkit's loader, and the Cal-QL/IQL
    hand loaders, do the same). Any other length mismatch is an error.
  * These tasks never terminate (only a time limit ends a path), so every
    discount is 1, as the IQL hand loader's `remove_terminals=True`; a file
    that marks `terminals` is logged and the marks are not used.
"""

import os
import re
from typing import List, Sequence

from absl import logging
import numpy as np

from iql_acme.data import validate
from iql_acme.data.errors import dataset_error
from iql_acme.types import Transitions

PATH_KEYS = ('observations', 'actions', 'rewards', 'next_observations')
STATE_KEY = 'state_observation'  # the state vector in demo observation dicts
_TASK_PREFIX = re.compile(r'[A-Za-z]+')  # 'pen' in pen2_sparse/pen_bc_sparse4
_FIX_FORMAT = ('pass an AWAC hand-data file: a pickled list of path dicts '
               '(e.g. pen2_sparse.npy, pen_bc_sparse4.npy)')


def awac_files_in(directory: str) -> List[str]:
  """The .npy files of `directory` (one task only), sorted by name."""
  names = sorted(n for n in os.listdir(directory) if n.endswith('.npy'))
  if not names:
    raise dataset_error(directory, 'directory holds no .npy files',
                        'put the AWAC files (e.g. pen2_sparse.npy and '
                        'pen_bc_sparse4.npy) there or pass file paths')
  tasks = sorted({_TASK_PREFIX.match(n).group(0) if _TASK_PREFIX.match(n)
                  else n for n in names})
  if len(tasks) > 1:
    raise dataset_error(directory, f'directory mixes files of several tasks '
                        f'{tasks}', 'pass the files of one task as a '
                        'comma-separated list of paths')
  return [os.path.join(directory, n) for n in names]


def read_awac(files: Sequence[str]) -> Transitions:
  """Concatenates every path of `files` (raw rewards, unclipped actions)."""
  parts = []
  for file in files:
    paths = _load_paths(file)
    marked = 0
    for index, path in enumerate(paths):
      part, terminal_marks = _path_transitions(path, f'{file} (path {index})')
      parts.append((f'{file} (path {index})', part))
      marked += terminal_marks
    if marked:
      logging.warning('%s marks %d steps terminal; hand tasks never terminate, '
                      'so those discounts stay 1.', file, marked)
  if not parts:
    raise dataset_error(','.join(files), 'dataset is empty (no paths)',
                        'check that the files hold the data you expect')
  first_source, first = parts[0]
  for source, part in parts[1:]:
    for field in ('observations', 'actions'):
      got, want = getattr(part, field).shape[1], getattr(first, field).shape[1]
      if got != want:
        raise dataset_error(source, f'{field} size {got} differs from {want} '
                            f'in {first_source}', 'load files of one task '
                            'together')
  return Transitions(*(np.concatenate(arrays) for arrays in
                       zip(*(part for _, part in parts))))


def _load_paths(file: str) -> list:
  """The list of path dicts pickled in `file`."""
  if not os.path.isfile(file):
    raise dataset_error(file, 'file not found', 'check the path')
  try:
    loaded = np.load(file, allow_pickle=True)
  except Exception as e:  # Unpickling a damaged file can raise almost anything.
    raise dataset_error(file, f'not a readable .npy file ({type(e).__name__}: '
                        f'{e})', 'the file is truncated, corrupt or of another '
                        f'format; {_FIX_FORMAT}')
  if not isinstance(loaded, np.ndarray):
    raise dataset_error(file, f'holds a {type(loaded).__name__}, not a list of '
                        'path dicts', _FIX_FORMAT)
  if loaded.dtype != object:
    raise dataset_error(file, f'holds a numeric array of shape {loaded.shape}, '
                        'not a list of path dicts', _FIX_FORMAT)
  paths = loaded.item() if loaded.ndim == 0 else list(loaded.reshape(-1))
  if isinstance(paths, dict):
    paths = [paths]
  if not isinstance(paths, (list, tuple)):
    raise dataset_error(file, f'holds a {type(paths).__name__}, not a list of '
                        'path dicts', _FIX_FORMAT)
  for index, path in enumerate(paths):
    if not isinstance(path, dict):
      raise dataset_error(file, f'element {index} is a {type(path).__name__}, '
                          'not a path dict', _FIX_FORMAT)
  return list(paths)


def _path_transitions(path: dict, source: str):
  """One path as Transitions, and how many of its steps are marked terminal."""
  validate.require_keys(list(path.keys()), PATH_KEYS, source, _FIX_FORMAT)
  actions = validate.as_matrix(_stack(path['actions'], 'actions', source),
                               'actions', source)
  steps = len(actions)
  if steps == 0:
    raise dataset_error(source, 'path has no steps', 'remove empty paths from '
                        'the file')
  rewards = validate.as_vector(path['rewards'], 'rewards', source)
  if len(rewards) == steps + 1:
    rewards = rewards[:steps]  # The demos' one extra trailing entry.
  arrays = {
      'observations': _observations(path['observations'], 'observations',
                                    source),
      'actions': actions,
      'rewards': rewards,
      'next_observations': _observations(path['next_observations'],
                                         'next_observations', source),
  }
  terminals = None
  if path.get('terminals') is not None:
    terminals = validate.as_vector(path['terminals'], 'terminals', source, bool)
    arrays['terminals'] = terminals
  validate.check_same_length(arrays, source)
  validate.check_finite(arrays, source)
  ends = np.zeros(steps, dtype=bool)
  ends[-1] = True
  part = Transitions(
      observations=arrays['observations'], actions=actions, rewards=rewards,
      discounts=np.ones(steps, dtype=np.float32),
      next_observations=arrays['next_observations'], episode_ends=ends)
  return part, int(terminals.sum()) if terminals is not None else 0


def _observations(values, key: str, source) -> np.ndarray:
  """[T, obs_dim] from an array, a list of vectors or a list of obs dicts."""
  if not (isinstance(values, np.ndarray) and values.dtype != object):
    values = list(values)
    if values and all(isinstance(v, dict) for v in values):
      if any(STATE_KEY not in v for v in values):
        raise dataset_error(source, f'{key} dicts lack {STATE_KEY!r} (keys '
                            f'{sorted(values[0].keys())})', _FIX_FORMAT)
      values = [v[STATE_KEY] for v in values]
  return validate.as_matrix(_stack(values, key, source), key, source)


def _stack(values, key: str, source) -> np.ndarray:
  """Stacks a list of per-step vectors; ragged rows are an error."""
  if isinstance(values, np.ndarray) and values.dtype != object:
    return values
  values = list(values)
  if not values:
    return np.zeros((0, 0), dtype=np.float32)
  try:
    return np.stack([np.asarray(v, dtype=np.float32) for v in values])
  except (TypeError, ValueError) as e:
    raise dataset_error(source, f'{key} rows are not vectors of one size '
                        f'({e})', _FIX_FORMAT)
