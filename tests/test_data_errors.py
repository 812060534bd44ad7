"""Bad data gets one clear DatasetError naming the file and the problem."""

import hashlib
import os

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')

import h5py  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest

from iql_acme.data import DatasetError, load_dataset

N, OBS_DIM, ACT_DIM = 20, 3, 2


def good_arrays():
  rng = np.random.default_rng(0)
  return {
      'observations': rng.normal(size=(N, OBS_DIM)).astype(np.float32),
      'actions': rng.uniform(-1, 1, size=(N, ACT_DIM)).astype(np.float32),
      'rewards': rng.normal(size=N).astype(np.float32),
      'terminals': np.arange(N) % 7 == 6,
      'timeouts': np.arange(N) % 10 == 9,
  }


def write_hdf5(path, arrays):
  with h5py.File(path, 'w') as f:
    for key, value in arrays.items():
      f.create_dataset(key, data=value)
  return str(path)


def save_object_array(path, items):
  values = np.empty(len(items), dtype=object)
  values[:] = items
  np.save(path, values, allow_pickle=True)
  return str(path)


def digest(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def expect_error(path, *fragments, source=None, **kwargs):
  """Loads `source` (default `path`), expects a one-line DatasetError naming
  `path` and every fragment, and checks that the file was not modified."""
  before = digest(path)
  with pytest.raises(DatasetError) as caught:
    load_dataset(source or path, domain=kwargs.pop('domain', 'locomotion'),
                 **kwargs)
  message = str(caught.value)
  assert '\n' not in message
  assert str(path) in message
  for fragment in fragments:
    assert fragment in message, message
  assert digest(path) == before
  return message


def test_missing_key(tmp_path):
  arrays = good_arrays()
  del arrays['terminals']
  expect_error(write_hdf5(tmp_path / 'd.hdf5', arrays), 'missing required key',
               "'terminals'")


def test_arrays_of_different_lengths(tmp_path):
  arrays = good_arrays()
  arrays['actions'] = arrays['actions'][:-3]
  expect_error(write_hdf5(tmp_path / 'd.hdf5', arrays), 'different lengths',
               f'actions {N - 3}', f'observations {N}')


def test_observation_size_does_not_match_environment(tmp_path):
  expect_error(write_hdf5(tmp_path / 'd.hdf5', good_arrays()),
               f'observation size {OBS_DIM}', 'environment (11)', obs_dim=11)


def test_action_size_does_not_match_environment(tmp_path):
  expect_error(write_hdf5(tmp_path / 'd.hdf5', good_arrays()),
               f'action size {ACT_DIM}', 'environment (6)', obs_dim=OBS_DIM,
               act_dim=6)


def test_nan_and_inf_values_are_counted_by_key(tmp_path):
  arrays = good_arrays()
  arrays['rewards'][[1, 4]] = np.nan
  arrays['observations'][3, 0] = np.inf
  expect_error(write_hdf5(tmp_path / 'd.hdf5', arrays), 'NaN or inf',
               'rewards has 2', 'observations has 1')


def test_empty_dataset(tmp_path):
  arrays = {k: v[:0] for k, v in good_arrays().items()}
  expect_error(write_hdf5(tmp_path / 'd.hdf5', arrays), 'empty')


def test_unknown_dataset_name(tmp_path, monkeypatch):
  monkeypatch.setenv('MINARI_DATASETS_PATH', str(tmp_path))
  with pytest.raises(DatasetError) as caught:
    load_dataset('hopper-mediun-v2', domain='locomotion')
  message = str(caught.value)
  assert message.startswith('hopper-mediun-v2: unknown dataset name')
  assert "'hopper-medium-v2'" in message  # A close match.
  assert 'path' in message  # Says how to pass a file instead.


def test_truncated_hdf5(tmp_path):
  path = write_hdf5(tmp_path / 'd.hdf5', good_arrays())
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  expect_error(path, 'truncated or corrupt')


def test_truncated_npy(tmp_path):
  path = save_object_array(tmp_path / 'pen2_sparse.npy', [
      {'observations': np.zeros((50, OBS_DIM)), 'actions': np.zeros((50, 2)),
       'rewards': np.zeros(50), 'next_observations': np.zeros((50, OBS_DIM))}])
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 100)
  expect_error(path, 'not a readable .npy file', 'truncated, corrupt',
               domain='hand_finetune')


def test_text_file_named_hdf5(tmp_path):
  path = tmp_path / 'd.hdf5'
  path.write_text('observations,actions\n1,2\n')
  expect_error(str(path), 'not an HDF5 file')


def test_npy_that_is_not_a_list_of_path_dicts(tmp_path):
  numeric = tmp_path / 'numeric.npy'
  np.save(numeric, np.zeros((5, 3)))
  expect_error(str(numeric), 'numeric array of shape (5, 3)',
               'list of path dicts', domain='hand_finetune')
  not_dicts = save_object_array(tmp_path / 'pen_bc_sparse4.npy', [[1, 2], 3])
  expect_error(not_dicts, 'element 0 is a list', domain='hand_finetune')


def test_awac_path_missing_key(tmp_path):
  path = save_object_array(tmp_path / 'pen2_sparse.npy', [
      {'observations': np.zeros((5, OBS_DIM)), 'rewards': np.zeros(5),
       'next_observations': np.zeros((5, OBS_DIM))}])
  expect_error(path, '(path 0)', "missing required key(s) ['actions']",
               domain='hand_finetune')


def test_minari_episode_with_wrong_observation_count(tmp_path):
  data_dir = tmp_path / 'ns' / 'toy-v0' / 'data'
  os.makedirs(data_dir)
  path = str(data_dir / 'main_data.hdf5')
  with h5py.File(path, 'w') as f:
    f.create_dataset('episode_0/observations', data=np.zeros((4, OBS_DIM)))
    f.create_dataset('episode_0/actions', data=np.zeros((4, ACT_DIM)))
    f.create_dataset('episode_0/rewards', data=np.zeros(4))
    f.create_dataset('episode_0/terminations', data=np.zeros(4, bool))
    f.create_dataset('episode_0/truncations', data=np.zeros(4, bool))
  expect_error(path, '(episode_0)', 'observations has 4 rows, expected 5',
               source=str(tmp_path / 'ns' / 'toy-v0'))


def test_npz_discounts_that_are_not_a_mask(tmp_path):
  arrays = good_arrays()
  path = tmp_path / 'd.npz'
  np.savez(path, observations=arrays['observations'],
           actions=arrays['actions'], rewards=arrays['rewards'],
           next_observations=arrays['observations'],
           discounts=np.full(N, 0.99, np.float32))
  expect_error(str(path), 'discounts holds values other than 0 and 1')


def test_missing_file(tmp_path):
  with pytest.raises(DatasetError, match='file not found'):
    load_dataset(str(tmp_path / 'nothing.hdf5'), domain='locomotion')
