"""The plain .npz transition format (what `experiments/train_offline.py` uses).

Keys: `observations, actions, rewards, next_observations` and `discounts`
(0 at true terminals, else 1) or `terminals` (or both, when they agree);
optional `episode_ends` and `timeouts`. Without `episode_ends`, a trajectory
ends at a terminal, a time-out, where the next row does not start at this
row's next observation, and at the last row. Given `episode_ends` are kept,
with terminals and the last row added (both always end a trajectory).
"""

import os
import tempfile
import zipfile
import zlib

import numpy as np

from iql_acme.data import validate
from iql_acme.data.episodes import episode_ends_from
from iql_acme.data.errors import dataset_error
from iql_acme.types import Transitions

FILE_MODE = 0o644
REQUIRED_KEYS = ('observations', 'actions', 'rewards', 'next_observations')
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_FIX_FORMAT = ('pass an .npz with observations, actions, rewards, '
               'next_observations and discounts or terminals (see save_npz)')


def read_npz(path: str) -> Transitions:
  """Reads a transition .npz (raw rewards, unclipped actions)."""
  if not os.path.isfile(path):
    raise dataset_error(path, 'file not found', 'check the path')
  try:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
      with loaded:
        data = {key: loaded[key] for key in loaded.files}
  except _READ_ERRORS as e:
    raise dataset_error(path, f'not a readable .npz file ({type(e).__name__}: '
                        f'{e})', 'the file is truncated, corrupt or of another '
                        f'format; {_FIX_FORMAT}')
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise dataset_error(path, f'holds a single array of shape {loaded.shape}, '
                        'not named arrays (an .npy renamed?)', _FIX_FORMAT)
  return npz_transitions(data, path)


def npz_transitions(data, source) -> Transitions:
  """Named arrays in the .npz layout to Transitions."""
  validate.require_keys(list(data), REQUIRED_KEYS, source, _FIX_FORMAT)
  if 'discounts' not in data and 'terminals' not in data:
    raise dataset_error(source, f'missing required key discounts or terminals '
                        f'(found {sorted(data)})', _FIX_FORMAT)
  steps = {
      'observations': validate.as_matrix(data['observations'], 'observations',
                                         source),
      'actions': validate.as_matrix(data['actions'], 'actions', source),
      'rewards': validate.as_vector(data['rewards'], 'rewards', source),
      'next_observations': validate.as_matrix(
          data['next_observations'], 'next_observations', source),
  }
  if 'discounts' in data:
    steps['discounts'] = validate.as_vector(data['discounts'], 'discounts',
                                            source)
  for key in ('terminals', 'timeouts', 'episode_ends'):
    if key in data:
      steps[key] = validate.as_vector(data[key], key, source, bool)
  validate.check_same_length(steps, source)
  validate.check_finite(steps, source)

  if 'discounts' in steps:
    discounts = steps['discounts']
    if not np.isin(discounts, (0.0, 1.0)).all():
      raise dataset_error(source, 'discounts holds values other than 0 and 1',
                          'store the terminal mask (0 at true terminals, else '
                          '1), not the discount factor')
    terminals = discounts == 0.0
    if 'terminals' in steps and (steps['terminals'] != terminals).any():
      raise dataset_error(source, 'discounts and terminals disagree', 'keep '
                          'one of them (discounts = 1 - terminals)')
  else:
    terminals = steps['terminals']
  obs, next_obs = steps['observations'], steps['next_observations']
  if 'episode_ends' in steps:
    ends = steps['episode_ends'] | terminals
    if len(ends):
      ends[-1] = True
  else:
    flags = [terminals] + ([steps['timeouts']] if 'timeouts' in steps else [])
    ends = episode_ends_from(obs, next_obs, *flags)
  return Transitions(
      observations=obs, actions=steps['actions'], rewards=steps['rewards'],
      discounts=1.0 - terminals.astype(np.float32), next_observations=next_obs,
      episode_ends=ends)


def save_npz(path: str, transitions: Transitions) -> None:
  """Writes `transitions` as a plain .npz (atomically: temp file, rename).

  The arrays are stored as given (float32, bool episode_ends); rewards are
  whatever the caller holds, so store raw rewards if the file is to be
  loaded with `load_dataset` (which applies the domain's reward transform).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  arrays = {
      'observations': np.asarray(transitions.observations, np.float32),
      'actions': np.asarray(transitions.actions, np.float32),
      'rewards': np.asarray(transitions.rewards, np.float32),
      'discounts': np.asarray(transitions.discounts, np.float32),
      'next_observations': np.asarray(transitions.next_observations,
                                      np.float32),
      'episode_ends': np.asarray(transitions.episode_ends, bool),
  }
  handle, temp_path = tempfile.mkstemp(dir=directory, suffix='.npz.part')
  try:
    with os.fdopen(handle, 'wb') as f:  # A file object: no '.npz' appended.
      np.savez(f, **arrays)
    os.chmod(temp_path, FILE_MODE)  # mkstemp makes it private (0600).
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise
