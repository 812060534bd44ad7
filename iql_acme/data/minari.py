"""Local Minari datasets, read with h5py (the minari package is not needed).

Layout: `<root>/<namespace>/<name>-vN/data/main_data.hdf5`, one `episode_N`
group per episode holding `observations` (T+1 rows) and `actions, rewards,
terminations, truncations` (T rows). The root is `$MINARI_DATASETS_PATH` or
`~/.minari/datasets`.

Dict observations: when `observations` is a group, its `observation` entry is
used (the agent's state, as in D4RL's AntMaze/PointMaze, whose observations
hold no goal) and the other entries (e.g. `achieved_goal`, `desired_goal`)
are not loaded; this is logged. A group without `observation` is an error.
"""

import os
from typing import List, Optional

from absl import logging
import h5py
import numpy as np
import tqdm

from iql_acme.data import validate
from iql_acme.data.errors import dataset_error
from iql_acme.data.hdf5_files import is_minari_file, open_hdf5, read_array
from iql_acme.types import Transitions

DATA_FILE = os.path.join('data', 'main_data.hdf5')
EPISODE_PREFIX = 'episode_'
STEP_KEYS = ('actions', 'rewards', 'terminations', 'truncations')
DICT_OBSERVATION_KEY = 'observation'
_FIX_FORMAT = ('pass a Minari main_data.hdf5 (episode_N groups with '
               'observations, actions, rewards, terminations, truncations)')


def minari_root() -> str:
  return os.environ.get('MINARI_DATASETS_PATH') or os.path.expanduser(
      '~/.minari/datasets')


def local_minari_ids(root: Optional[str] = None) -> List[str]:
  """Ids ('namespace/name-vN') of the datasets stored under `root`."""
  root = root or minari_root()
  ids = []
  for directory, subdirs, _ in os.walk(root):
    if os.path.isfile(os.path.join(directory, DATA_FILE)):
      ids.append(os.path.relpath(directory, root))
      subdirs.clear()
  return sorted(ids)


def minari_dataset_dir(dataset_id: str,
                       root: Optional[str] = None) -> Optional[str]:
  """The local directory of `dataset_id`, or None when it is not stored.

  A bare 'name-vN' matches a dataset of that name in any namespace.
  """
  root = root or minari_root()
  direct = os.path.join(root, dataset_id)
  if os.path.isfile(os.path.join(direct, DATA_FILE)):
    return direct
  if '/' in dataset_id:
    return None
  matches = [i for i in local_minari_ids(root)
             if os.path.basename(i) == dataset_id]
  if len(matches) > 1:
    raise dataset_error(dataset_id, f'matches several Minari datasets '
                        f'{matches}', 'pass the full id namespace/name-vN')
  return os.path.join(root, matches[0]) if matches else None


def read_minari(path: str) -> Transitions:
  """Reads a Minari dataset dir or its main_data.hdf5 (raw rewards)."""
  if os.path.isdir(path):
    path = os.path.join(path, DATA_FILE)
  with open_hdf5(path) as h5file:
    if not is_minari_file(h5file):
      raise dataset_error(path, f'no {EPISODE_PREFIX}N groups (found '
                          f'{sorted(h5file.keys())})', _FIX_FORMAT)
    names = sorted(h5file.keys(), key=lambda k: _episode_number(k, path))
    episodes, ignored = [], set()
    for name in tqdm.tqdm(names, desc='minari episodes', unit='ep',
                          leave=False, mininterval=2.0):
      episodes.append(_episode(h5file[name], f'{path} ({name})', ignored))
  if ignored:
    logging.info('%s: dict observations; loaded %r, not loaded %s.', path,
                 DICT_OBSERVATION_KEY, sorted(ignored))
  return Transitions(*(np.concatenate(arrays) for arrays in zip(*episodes)))


def _episode_number(name: str, path: str) -> int:
  suffix = name[len(EPISODE_PREFIX):]
  if not name.startswith(EPISODE_PREFIX) or not suffix.isdigit():
    raise dataset_error(path, f'unexpected top-level entry {name!r}',
                        _FIX_FORMAT)
  return int(suffix)


def _episode(group, source: str, ignored: set) -> Transitions:
  """One episode group as Transitions."""
  validate.require_keys(list(group.keys()), ('observations',) + STEP_KEYS,
                        source, _FIX_FORMAT)
  observations = group['observations']
  if isinstance(observations, h5py.Group):  # Dict observations.
    if DICT_OBSERVATION_KEY not in observations:
      raise dataset_error(source, f'observations is a dict of '
                          f'{sorted(observations.keys())} without '
                          f'{DICT_OBSERVATION_KEY!r}', 'flatten the '
                          'observations to one array and re-export')
    ignored.update(k for k in observations.keys() if k != DICT_OBSERVATION_KEY)
    observations = read_array(observations, DICT_OBSERVATION_KEY, source)
  else:
    observations = read_array(group, 'observations', source)
  observations = validate.as_matrix(observations, 'observations', source)
  steps = {
      'actions': validate.as_matrix(read_array(group, 'actions', source),
                                    'actions', source),
      'rewards': validate.as_vector(read_array(group, 'rewards', source),
                                    'rewards', source),
      'terminations': validate.as_vector(
          read_array(group, 'terminations', source), 'terminations', source,
          bool),
      'truncations': validate.as_vector(
          read_array(group, 'truncations', source), 'truncations', source,
          bool),
  }
  length = validate.check_same_length(steps, source)
  if length == 0:
    raise dataset_error(source, 'episode has no steps', 'remove it and '
                        're-export the dataset')
  if len(observations) != length + 1:
    raise dataset_error(source, f'observations has {len(observations)} rows, '
                        f'expected {length + 1} (one more than actions)',
                        _FIX_FORMAT)
  validate.check_finite({'observations': observations, **steps}, source)
  ends = steps['terminations'] | steps['truncations']
  ends[-1] = True
  return Transitions(
      observations=observations[:-1], actions=steps['actions'],
      rewards=steps['rewards'],
      discounts=1.0 - steps['terminations'].astype(np.float32),
      next_observations=observations[1:], episode_ends=ends)
