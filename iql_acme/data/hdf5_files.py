"""Opening and reading HDF5 files with errors that say what went wrong."""

import contextlib
import os

import h5py
import numpy as np

from iql_acme.data.errors import dataset_error

_FIX_CORRUPT = ('the file is truncated or corrupt: delete it and download or '
                'export it again')


@contextlib.contextmanager
def open_hdf5(path: str):
  """Opens `path` read-only; bad or unreadable files raise DatasetError."""
  if not os.path.isfile(path):
    raise dataset_error(path, 'file not found', 'check the path')
  if not h5py.is_hdf5(path):
    raise dataset_error(path, 'not an HDF5 file (wrong format)', 'pass an '
                        'HDF5 dataset file, or use .npz/.npy for those formats')
  try:
    h5file = h5py.File(path, 'r')
  except OSError as e:
    raise dataset_error(path, f'cannot open as HDF5 ({e})', _FIX_CORRUPT)
  try:
    with h5file:
      yield h5file
  except (OSError, RuntimeError) as e:
    # Raised while reading data blocks past a truncation point.
    raise dataset_error(path, f'cannot read HDF5 data ({e})', _FIX_CORRUPT)


def read_array(group: h5py.Group, key: str, source) -> np.ndarray:
  """The whole dataset `group[key]` as numpy; a sub-group is an error."""
  item = group[key]
  if not isinstance(item, h5py.Dataset):
    raise dataset_error(source, f'{item.name} is a group of '
                        f'{sorted(item.keys())}, expected an array',
                        f'store {key} as a single array')
  return item[()]


def is_minari_file(h5file: h5py.File) -> bool:
  """Minari's main_data.hdf5 holds one `episode_N` group per episode."""
  return any(k.startswith('episode_') for k in h5file.keys())

