"""`load_dataset`: any supported source to Transitions ready for the learner."""

import os
from typing import Optional, Tuple

from absl import logging
import numpy as np

from iql_acme.config import PRESETS
from iql_acme.data import awac, minari, validate
from iql_acme.data.d4rl_hdf5 import read_d4rl_hdf5
from iql_acme.data.download import (d4rl_dataset_path, d4rl_urls,
                                    download_d4rl, unknown_name_error)
from iql_acme.data.errors import dataset_error
from iql_acme.data.hdf5_files import is_minari_file, open_hdf5
from iql_acme.data.npz import read_npz
from iql_acme.data.transforms import (apply_reward_transform, clip_actions,
                                      reward_transform_for, with_fields)
from iql_acme.types import RewardTransform, Transitions

HDF5_SUFFIXES = ('.hdf5', '.h5')
NPZ_SUFFIX = '.npz'
NPY_SUFFIX = '.npy'
_PATH_PREFIXES = ('/', './', '../', '~')


def load_dataset(source: str, *, domain: str, obs_dim: Optional[int] = None,
                 act_dim: Optional[int] = None
                 ) -> Tuple[Transitions, RewardTransform]:
  """Loads `source` as float32 Transitions with the domain's preprocessing.

  Args:
    source: a D4RL name (downloaded into the D4RL cache when missing), a
      Minari id ('namespace/name-vN' or 'name-vN'), or the path of a D4RL
      .hdf5/.h5, a transition .npz, an AWAC .npy (or a comma-separated list
      of them), a directory of one task's AWAC .npy files, or a Minari
      dataset directory.
    domain: a key of `iql_acme.config.PRESETS`; picks the reward transform.
    obs_dim: when given, the observation size the environment expects.
    act_dim: when given, the action size the environment expects.

  Returns:
    The transitions, with actions clipped to +-ACTION_CLIP_LIMIT and the
    reward transform applied, and that transform (for the online phase).

  Raises:
    DatasetError: the source is unknown, unreadable or holds bad data.
  """
  if domain not in PRESETS:
    raise ValueError(f'unknown domain {domain!r}; choose one of '
                     f'{sorted(PRESETS)}')
  transitions, origin = read_source(source)
  validate.check_transitions(transitions, origin, obs_dim, act_dim)
  transitions = with_fields(transitions,
                            actions=clip_actions(transitions.actions))
  transform = reward_transform_for(domain, transitions, source=origin)
  transitions = apply_reward_transform(transitions, transform)
  logging.info(
      'Loaded %d transitions (%d trajectories, %d terminals) from %s; reward '
      'transform scale=%g shift=%g.', transitions.size,
      int(transitions.episode_ends.sum()),
      int(np.sum(transitions.discounts == 0)), origin, transform.scale,
      transform.shift)
  return transitions, transform


def read_source(source) -> Tuple[Transitions, str]:
  """Raw Transitions of `source` and the file or directory they came from."""
  source = os.fspath(source)
  if ',' in source:
    files = [os.path.expanduser(f.strip()) for f in source.split(',')
             if f.strip()]
    bad = [f for f in files if not f.endswith(NPY_SUFFIX)]
    if bad:
      raise dataset_error(source, f'a comma-separated list may hold only .npy '
                          f'files, not {bad}', 'load other formats one at a '
                          'time')
    return awac.read_awac(files), source
  path = os.path.expanduser(source)
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, minari.DATA_FILE)):
      return minari.read_minari(path), path
    return awac.read_awac(awac.awac_files_in(path)), path
  if os.path.isfile(path) or _looks_like_path(source):
    return _read_file(path), path
  if source in d4rl_urls():
    path = d4rl_dataset_path(source)
    if not os.path.isfile(path):
      path = download_d4rl(source)
    return read_d4rl_hdf5(path), path
  minari_dir = minari.minari_dataset_dir(source)
  if minari_dir:
    return minari.read_minari(minari_dir), minari_dir
  raise unknown_name_error(source, minari.local_minari_ids())


def _looks_like_path(source: str) -> bool:
  suffixes = HDF5_SUFFIXES + (NPZ_SUFFIX, NPY_SUFFIX)
  return source.lower().endswith(suffixes) or source.startswith(_PATH_PREFIXES)


def _read_file(path: str) -> Transitions:
  if not os.path.isfile(path):
    raise dataset_error(path, 'file not found', 'check the path, or pass a '
                        'D4RL name or Minari id instead')
  suffix = os.path.splitext(path)[1].lower()
  if suffix in HDF5_SUFFIXES:
    with open_hdf5(path) as h5file:
      is_minari = is_minari_file(h5file)
    return minari.read_minari(path) if is_minari else read_d4rl_hdf5(path)
  if suffix == NPZ_SUFFIX:
    return read_npz(path)
  if suffix == NPY_SUFFIX:
    return awac.read_awac([path])
  raise dataset_error(path, f'unsupported file type {suffix!r}', 'pass a '
                      '.hdf5/.h5, .npz or .npy file')
