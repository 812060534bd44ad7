"""Loaders: exact transition semantics of every supported format."""

import os

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')

import d4rl  # pylint: disable=g-import-not-at-top
import h5py
import numpy as np
import pytest

from iql_acme.data import (ACTION_CLIP_LIMIT, DatasetError, load_dataset,
                           reward_transform_for, save_npz)
from iql_acme.types import RewardTransform, Transitions

OBS_DIM, ACT_DIM = 3, 2


def write_hdf5(path, arrays, extras=True):
  """A D4RL-style file, with the optional infos/ and metadata/ groups."""
  with h5py.File(path, 'w') as f:
    for key, value in arrays.items():
      f.create_dataset(key, data=value)
    if extras:
      f.create_dataset('infos/qpos', data=np.zeros((len(arrays['rewards']), 4)))
      f.create_dataset('metadata/algorithm', data='SAC')
  return str(path)


def numbered_steps(n):
  """Observations whose first entry is the row index, for readable checks."""
  obs = np.zeros((n, OBS_DIM), np.float32)
  obs[:, 0] = np.arange(n)
  actions = np.full((n, ACT_DIM), 0.25, np.float32)
  rewards = np.arange(n, dtype=np.float32) * 0.5
  return obs, actions, rewards


def random_d4rl_arrays(seed=0):
  """Episodes ending in terminals, time-outs, both, and a cut at the end."""
  rng = np.random.default_rng(seed)
  lengths_and_ends = [(7, 'terminal'), (10, 'timeout'), (5, 'terminal'),
                      (12, 'timeout'), (6, 'both'), (9, 'timeout'),
                      (8, 'none')]
  n = sum(length for length, _ in lengths_and_ends)
  terminals = np.zeros(n, bool)
  timeouts = np.zeros(n, bool)
  row = 0
  for length, end in lengths_and_ends:
    row += length
    terminals[row - 1] = end in ('terminal', 'both')
    timeouts[row - 1] = end in ('timeout', 'both')
  return {
      'observations': rng.normal(size=(n, OBS_DIM)).astype(np.float32),
      'actions': rng.uniform(-0.9, 0.9, size=(n, ACT_DIM)).astype(np.float32),
      'rewards': rng.normal(size=n).astype(np.float32),
      'terminals': terminals,
      'timeouts': timeouts,
  }


def test_d4rl_hdf5_matches_d4rl_qlearning_dataset(tmp_path):
  arrays = random_d4rl_arrays()
  path = write_hdf5(tmp_path / 'data.hdf5', arrays)
  loaded, transform = load_dataset(path, domain='kitchen')
  reference = d4rl.qlearning_dataset(None, dataset=arrays)
  assert transform == RewardTransform()
  assert loaded.size == len(reference['rewards'])
  np.testing.assert_array_equal(loaded.observations, reference['observations'])
  np.testing.assert_array_equal(loaded.actions, reference['actions'])
  np.testing.assert_array_equal(loaded.next_observations,
                                reference['next_observations'])
  np.testing.assert_array_equal(loaded.rewards, reference['rewards'])
  np.testing.assert_array_equal(loaded.discounts == 0, reference['terminals'])
  for field in Transitions._fields[:-1]:
    assert getattr(loaded, field).dtype == np.float32, field


def test_d4rl_without_timeouts_matches_d4rl_with_unlimited_episodes(tmp_path):
  arrays = random_d4rl_arrays(seed=1)
  del arrays['timeouts']
  path = write_hdf5(tmp_path / 'old.hdf5', arrays, extras=False)
  loaded, _ = load_dataset(path, domain='adroit')

  class NoTimeLimit:
    _max_episode_steps = 10**9
  reference = d4rl.qlearning_dataset(NoTimeLimit(), dataset=arrays)
  np.testing.assert_array_equal(loaded.next_observations,
                                reference['next_observations'])
  np.testing.assert_array_equal(loaded.discounts == 0, reference['terminals'])
  assert loaded.episode_ends[np.flatnonzero(reference['terminals'])].all()


def three_episode_flags():
  """8 rows: A = 0-2 ending in a time-out, B = 3-5 in a terminal, C = 6-7."""
  terminals = np.zeros(8, bool)
  terminals[5] = True
  timeouts = np.zeros(8, bool)
  timeouts[2] = True
  return terminals, timeouts


def test_d4rl_timeouts_are_not_terminals_and_cut_steps_are_dropped(tmp_path):
  obs, actions, rewards = numbered_steps(8)
  # Episode A: rows 0-2, time-out at 2. B: rows 3-5, terminal at 5. C: 6-7.
  terminals, timeouts = three_episode_flags()
  path = write_hdf5(tmp_path / 'd.hdf5', dict(
      observations=obs, actions=actions, rewards=rewards, terminals=terminals,
      timeouts=timeouts))
  loaded, _ = load_dataset(path, domain='adroit')
  kept = [0, 1, 3, 4, 5, 6]  # Row 2's s' would be row 3; row 7 has no s'.
  np.testing.assert_array_equal(loaded.observations[:, 0], kept)
  np.testing.assert_array_equal(loaded.next_observations[:, 0],
                                np.array(kept) + 1)
  np.testing.assert_array_equal(loaded.rewards, rewards[kept])
  np.testing.assert_array_equal(loaded.discounts, [1, 1, 1, 1, 0, 1])
  np.testing.assert_array_equal(loaded.episode_ends,
                                [False, True, False, False, True, True])


def test_d4rl_next_observations_keep_every_row(tmp_path):
  obs, actions, rewards = numbered_steps(8)
  next_obs = obs + np.array([1, 0, 0], np.float32)
  next_obs[2, 0] = 100.0  # The real s' at the time-out, not row 3.
  next_obs[5, 0] = 200.0
  terminals, timeouts = three_episode_flags()
  path = write_hdf5(tmp_path / 'd.hdf5', dict(
      observations=obs, actions=actions, rewards=rewards, terminals=terminals,
      timeouts=timeouts, next_observations=next_obs))
  loaded, _ = load_dataset(path, domain='adroit')
  assert loaded.size == 8
  np.testing.assert_array_equal(loaded.next_observations, next_obs)
  np.testing.assert_array_equal(loaded.discounts, [1, 1, 1, 1, 1, 0, 1, 1])
  np.testing.assert_array_equal(
      loaded.episode_ends, [False, False, True, False, False, True, False,
                            True])


def python_returns(rewards, boundaries):
  """Sum of rewards between boundaries, by a plain loop."""
  returns, total = [], 0.0
  for reward, is_end in zip(rewards, boundaries):
    total += float(reward)
    if is_end:
      returns.append(total)
      total = 0.0
  return returns


def test_locomotion_scale_is_1000_over_return_range(tmp_path):
  arrays = random_d4rl_arrays(seed=2)
  n = len(arrays['rewards'])
  arrays['next_observations'] = np.concatenate(
      [arrays['observations'][1:], np.ones((1, OBS_DIM), np.float32)])
  path = write_hdf5(tmp_path / 'loco.hdf5', arrays)
  loaded, transform = load_dataset(path, domain='locomotion')
  boundaries = arrays['terminals'] | arrays['timeouts']
  boundaries[n - 1] = True
  returns = python_returns(arrays['rewards'], boundaries)
  expected_scale = 1000.0 / (max(returns) - min(returns))
  assert transform.shift == 0.0
  np.testing.assert_allclose(transform.scale, expected_scale, rtol=1e-9)
  np.testing.assert_allclose(loaded.rewards, arrays['rewards'] * expected_scale,
                             rtol=1e-6)


def test_locomotion_scale_uses_only_kept_d4rl_rows(tmp_path):
  arrays = random_d4rl_arrays(seed=3)
  path = write_hdf5(tmp_path / 'loco.hdf5', arrays)
  _, transform = load_dataset(path, domain='locomotion')
  reference = d4rl.qlearning_dataset(None, dataset=arrays)
  # Kept rows split where the next kept row does not continue from this one.
  ends = reference['terminals'].copy()
  ends[:-1] |= np.any(reference['observations'][1:] !=
                      reference['next_observations'][:-1], axis=1)
  ends[-1] = True
  returns = python_returns(reference['rewards'], ends)
  np.testing.assert_allclose(transform.scale,
                             1000.0 / (max(returns) - min(returns)), rtol=1e-6)


def test_antmaze_rewards_minus_one_and_actions_clipped(tmp_path):
  obs, _, _ = numbered_steps(6)
  actions = np.array([[1.0, -1.0], [2.0, -3.0], [0.5, -0.5], [1e-6, 0.0],
                      [0.99999, -0.999995], [0.0, 0.0]], np.float32)
  rewards = np.array([0, 0, 1, 0, 1, 0], np.float32)
  terminals = np.array([0, 0, 1, 0, 0, 0], bool)
  path = write_hdf5(tmp_path / 'ant.hdf5', dict(
      observations=obs, actions=actions, rewards=rewards, terminals=terminals,
      timeouts=np.zeros(6, bool)))
  loaded, transform = load_dataset(path, domain='antmaze')
  assert transform == RewardTransform(scale=1.0, shift=-1.0)
  np.testing.assert_array_equal(loaded.rewards, rewards[:5] - 1.0)
  assert ACTION_CLIP_LIMIT == pytest.approx(1 - 1e-5)
  expected = np.clip(actions[:5], -ACTION_CLIP_LIMIT, ACTION_CLIP_LIMIT)
  np.testing.assert_array_equal(loaded.actions, expected)
  assert np.abs(loaded.actions).max() < 1.0
  np.testing.assert_array_equal(loaded.actions[2], [0.5, -0.5])


def save_object_array(path, paths):
  """Pickles a list of path dicts as an object array, like AWAC's files."""
  values = np.empty(len(paths), dtype=object)
  values[:] = paths
  np.save(path, values, allow_pickle=True)
  return str(path)


def demo_path(start, steps, obs_dim=OBS_DIM):
  """An expert-demo path: dict observations, one extra reward entry."""
  states = [np.full(obs_dim, start + t, np.float32) for t in range(steps + 1)]
  return {
      'observations': [{'state_observation': s, 'desired_goal': -s}
                       for s in states[:-1]],
      'next_observations': [{'state_observation': s} for s in states[1:]],
      'actions': np.full((steps, ACT_DIM), 0.5, np.float32),
      'rewards': np.array([-1.0] * (steps - 1) + [0.0, 77.0]),  # 77: extra.
      'terminals': np.zeros(steps, bool),
      'agent_infos': [{} for _ in range(steps)],
      'env_infos': [{'goal_achieved': False} for _ in range(steps)],
  }


def bc_path(start, steps, obs_dim=OBS_DIM):
  """A BC-rollout path: arrays, [T, 1] rewards and terminals."""
  states = start + np.arange(steps + 1, dtype=np.float32)[:, None] * np.ones(
      obs_dim, np.float32)
  return {
      'observations': states[:-1], 'next_observations': states[1:],
      'actions': np.full((steps, ACT_DIM), -2.0, np.float32),
      'rewards': -np.ones((steps, 1), np.float32),
      'terminals': np.zeros((steps, 1), bool),
      'agent_infos': np.array([{}] * steps),
      'env_infos': np.array([{}] * steps),
  }


def test_awac_demos_and_bc_rollouts(tmp_path):
  demo_file = save_object_array(tmp_path / 'pen2_sparse.npy',
                                [demo_path(0, 4), demo_path(100, 3)])
  bc_file = save_object_array(tmp_path / 'pen_bc_sparse4.npy',
                              [bc_path(200, 5)])
  loaded, transform = load_dataset(f'{demo_file},{bc_file}',
                                   domain='hand_finetune')
  assert transform == RewardTransform()
  assert loaded.size == 4 + 3 + 5
  np.testing.assert_array_equal(
      loaded.observations[:, 0],
      [0, 1, 2, 3, 100, 101, 102, 200, 201, 202, 203, 204])
  np.testing.assert_array_equal(loaded.next_observations[:, 0],
                                loaded.observations[:, 0] + 1)
  # The extra trailing demo reward (77) is dropped; 0/-1 kept as they are.
  np.testing.assert_array_equal(
      loaded.rewards, [-1, -1, -1, 0, -1, -1, 0, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(loaded.discounts, np.ones(12))
  np.testing.assert_array_equal(np.flatnonzero(loaded.episode_ends), [3, 6, 11])
  np.testing.assert_array_equal(loaded.actions[-1],
                                np.float32([-ACTION_CLIP_LIMIT] * 2))

  from_dir, _ = load_dataset(str(tmp_path), domain='hand_finetune')
  for field in Transitions._fields:  # Sorted: pen2_sparse before pen_bc.
    np.testing.assert_array_equal(getattr(from_dir, field),
                                  getattr(loaded, field))


def test_awac_reward_length_other_than_plus_one_is_an_error(tmp_path):
  path = demo_path(0, 4)
  path['rewards'] = np.zeros(6)
  file = save_object_array(tmp_path / 'door2_sparse.npy', [path])
  with pytest.raises(DatasetError, match='different lengths'):
    load_dataset(file, domain='hand_finetune')


def write_minari(dataset_dir, episodes, dict_obs=False):
  os.makedirs(dataset_dir / 'data')
  with h5py.File(dataset_dir / 'data' / 'main_data.hdf5', 'w') as f:
    for number, episode in episodes.items():
      group = f.create_group(f'episode_{number}')
      if dict_obs:
        group.create_dataset('observations/observation',
                             data=episode['observations'])
        group.create_dataset('observations/desired_goal',
                             data=np.zeros((len(episode['observations']), 2)))
      else:
        group.create_dataset('observations', data=episode['observations'])
      for key in ('actions', 'rewards', 'terminations', 'truncations'):
        group.create_dataset(key, data=episode[key])
  return str(dataset_dir)


def minari_episode(start, steps, terminated):
  obs, actions, rewards = numbered_steps(steps + 1)
  obs[:, 0] += start
  ends = np.zeros(steps, bool)
  ends[-1] = True
  return dict(observations=obs, actions=actions[:steps],
              rewards=rewards[:steps],
              terminations=ends & terminated, truncations=ends & ~terminated)


@pytest.mark.parametrize('dict_obs', [False, True])
def test_minari_layout_by_path_and_id(tmp_path, monkeypatch, dict_obs):
  root = tmp_path / 'minari'
  episodes = {0: minari_episode(0, 3, True), 10: minari_episode(100, 2, False),
              2: minari_episode(50, 4, False)}
  dataset_dir = write_minari(root / 'mujoco' / 'toy-v0', episodes, dict_obs)
  loaded, _ = load_dataset(dataset_dir, domain='kitchen', obs_dim=OBS_DIM,
                           act_dim=ACT_DIM)
  order = [0, 1, 2, 50, 51, 52, 53, 100, 101]  # episode_0, _2, _10.
  np.testing.assert_array_equal(loaded.observations[:, 0], order)
  np.testing.assert_array_equal(loaded.next_observations[:, 0],
                                np.array(order) + 1)
  np.testing.assert_array_equal(loaded.discounts, [1, 1, 0] + [1] * 6)
  np.testing.assert_array_equal(np.flatnonzero(loaded.episode_ends), [2, 6, 8])

  monkeypatch.setenv('MINARI_DATASETS_PATH', str(root))
  for source in ('mujoco/toy-v0', 'toy-v0',
                 os.path.join(dataset_dir, 'data', 'main_data.hdf5')):
    again, _ = load_dataset(source, domain='kitchen')
    np.testing.assert_array_equal(again.observations, loaded.observations)


def test_npz_roundtrip_and_derived_episode_ends(tmp_path):
  obs, actions, rewards = numbered_steps(6)
  next_obs = obs + np.array([1, 0, 0], np.float32)
  next_obs[2, 0] = 50.0  # Row 3 does not continue row 2: a data break.
  terminals = np.array([0, 1, 0, 0, 0, 0], bool)
  timeouts = np.array([0, 0, 0, 0, 1, 0], bool)
  path = tmp_path / 'plain.npz'
  np.savez(path, observations=obs, actions=actions, rewards=rewards,
           next_observations=next_obs, terminals=terminals, timeouts=timeouts)
  loaded, _ = load_dataset(str(path), domain='adroit')
  np.testing.assert_array_equal(loaded.discounts, 1 - terminals)
  np.testing.assert_array_equal(loaded.episode_ends,
                                [False, True, True, False, True, True])
  np.testing.assert_array_equal(loaded.next_observations, next_obs)

  saved = tmp_path / 'out' / 'saved.npz'
  save_npz(str(saved), loaded)
  assert sorted(np.load(saved).files) == sorted(
      ['observations', 'actions', 'rewards', 'discounts', 'next_observations',
       'episode_ends'])
  again, _ = load_dataset(str(saved), domain='adroit')
  for field in Transitions._fields:
    np.testing.assert_array_equal(getattr(again, field), getattr(loaded, field))
  assert os.listdir(saved.parent) == ['saved.npz']  # No temporary left.


def test_reward_transform_for_domains():
  obs, actions, rewards = numbered_steps(4)
  transitions = Transitions(obs, actions, rewards, np.ones(4, np.float32), obs,
                            np.array([0, 1, 0, 1], bool))
  for domain in ('kitchen', 'adroit', 'hand_finetune'):
    assert reward_transform_for(domain, transitions) == RewardTransform()
  # Returns 0 + 0.5 = 0.5 and 1 + 1.5 = 2.5.
  assert reward_transform_for('locomotion', transitions).scale == (
      pytest.approx(1000.0 / 2.0))
  with pytest.raises(ValueError, match='unknown domain'):
    reward_transform_for('atari', transitions)
  flat = Transitions(**{**transitions._asdict(),
                        'rewards': np.ones(4, np.float32)})
  with pytest.raises(DatasetError, match='same return'):
    reward_transform_for('locomotion', flat)
