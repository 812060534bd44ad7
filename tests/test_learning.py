"""IQLLearner (the Acme/Reverb adapter) against independently computed references.

The learner's offline chunking, save/restore, the online Reverb batch mix and
reward transform, and that the whole update actually fits a known value. The
pure update itself is tested in tests/core/test_update.py.
"""

import itertools
import os
import sys

os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')

from acme import specs  # pylint: disable=g-import-not-at-top,wrong-import-position
from acme.utils import loggers  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import learning  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme import networks as iql_networks  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.config import IQLConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.types import RewardTransform, Transitions  # pylint: disable=g-import-not-at-top,wrong-import-position

# The core tests' small problem and batches (tests/core/test_update.py).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'core'))
from test_update import ACT_DIM, BATCH, OBS_DIM, _batch, _config  # pylint: disable=g-import-not-at-top,wrong-import-position


def _spec():
  return specs.EnvironmentSpec(
      observations=specs.Array((OBS_DIM,), np.float32),
      actions=specs.BoundedArray((ACT_DIM,), np.float32, -1.0, 1.0),
      rewards=specs.Array((), np.float32),
      discounts=specs.BoundedArray((), np.float32, 0.0, 1.0))


def _tree_allclose(a, b, **kwargs):
  leaves = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda x, y: np.allclose(x, y, **kwargs), a, b))
  return all(leaves)


def _learner(config, data, seed=0, **kwargs):
  logger = loggers.InMemoryLogger()
  learner = learning.IQLLearner(
      iql_networks.make_networks(_spec(), config), config,
      jax.random.PRNGKey(seed), data, logger=logger, **kwargs)
  return learner, logger


def test_learner_offline_chunks_stop_exactly_and_save_restore():
  config = _config(offline_steps=250, offline_steps_per_call=100)
  data = _batch(size=500)
  learner, logger = _learner(config, data)
  # The dataset is put once in the default device's memory (a GPU's, if any).
  assert learner._offline_data.observations.devices() == {jax.devices()[0]}  # pylint: disable=protected-access
  learner.step()
  learner.step()
  saved = learner.save()
  learner.step()
  assert [row['learner_steps'] for row in logger.data] == [100, 200, 250]
  assert all(row['phase'] == 'offline' for row in logger.data)
  assert learner.steps == 250 and not learner.in_offline_phase
  assert int(learner.get_variables(['learner_steps'])[0]) == 250
  with pytest.raises(RuntimeError, match='replay'):
    learner.step()  # Online phase without a replay iterator.

  # save/restore round-trips: another learner restored from the state saved
  # at 200 steps takes the same last chunk of 50 to the same variables.
  other, other_logger = _learner(config, data, seed=1)
  other.restore(saved)
  assert other.steps == 200 and other.in_offline_phase
  other.step()
  assert other.steps == 250
  assert other_logger.data[-1]['learner_steps'] == 250
  for name in ('policy', 'critic', 'value'):
    assert _tree_allclose(other.get_variables([name])[0],
                          learner.get_variables([name])[0], rtol=1e-6,
                          atol=1e-7)
  # Restoring the learner itself rewinds it.
  learner.restore(saved)
  assert learner.steps == 200 and learner.in_offline_phase


def _rows(data: Transitions) -> np.ndarray:
  """Transitions as the replay rows the adder writes."""
  return np.stack([learning.transition_row(*t) for t in zip(
      data.observations, data.actions, data.rewards, data.discounts,
      data.next_observations)])


def _reader(*takes):
  """A replay iterator: these takes of rows, then nothing new, forever."""
  return itertools.chain(takes, itertools.repeat(np.zeros((0, 0), np.float32)))


def test_online_step_takes_rows_once_and_applies_reward_transform():
  config = _config(offline_steps=0, online_fraction=1.0,
                   rate_limit_tolerance_steps=BATCH)
  transform = RewardTransform(scale=2.0, shift=-1.0)
  online = _batch(seed=3)._replace(rewards=np.full(BATCH, 0.25, np.float32))
  learner, logger = _learner(config, _batch(size=100),
                             replay_iterator=_reader(_rows(online)),
                             reward_transform=transform)
  assert not learner.in_offline_phase
  learner.step()
  row = logger.data[-1]
  # One update per new transition, every batch row from the online data.
  assert learner.steps == BATCH and row['phase'] == 'online'
  assert row['online_fraction'] == 1.0
  assert row['reward'] == pytest.approx(2.0 * 0.25 - 1.0)
  assert row['replay_size'] == BATCH == learner.num_online
  held = learner.online_transitions()
  np.testing.assert_allclose(held.rewards, transform(online.rewards))
  np.testing.assert_array_equal(held.observations, online.observations)
  # Nothing new in replay: no update, no log row (after a short wait).
  learner.step()
  assert learner.steps == BATCH and len(logger.data) == 1


def test_transitions_from_rows_applies_reward_transform():
  batch = _batch(seed=4, size=5)
  transform = RewardTransform(scale=0.5, shift=-1.0)
  got = learning.transitions_from_rows(_rows(batch), transform, OBS_DIM)
  np.testing.assert_allclose(got.rewards, 0.5 * batch.rewards - 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(got.observations, batch.observations)
  np.testing.assert_allclose(got.actions, batch.actions)
  np.testing.assert_allclose(got.next_observations, batch.next_observations)
  np.testing.assert_array_equal(got.discounts, batch.discounts)
  assert got.observations.dtype == jnp.float32
  assert not np.any(got.episode_ends)


def test_replay_rows_round_trip_and_ahead_compiled_online_update():
  """Rows as the adder writes them; the ahead-compiled call equals jit's."""
  config = _config(offline_steps=0, rate_limit_tolerance_steps=BATCH)
  online = _batch(seed=5, size=BATCH)
  rows = _rows(online)
  split = learning.split_transition_rows(rows, OBS_DIM)
  np.testing.assert_array_equal(split.observation, online.observations)
  np.testing.assert_array_equal(split.action, online.actions)
  np.testing.assert_array_equal(split.reward, online.rewards)
  np.testing.assert_array_equal(split.discount, online.discounts)
  np.testing.assert_array_equal(split.next_observation,
                                online.next_observations)
  ahead, _ = _learner(config, _batch(size=100), replay_iterator=_reader(rows))
  jitted, _ = _learner(config, _batch(size=100), replay_iterator=_reader(rows))
  jitted._online_compiled = None  # pylint: disable=protected-access
  ahead.step()
  jitted.step()
  assert ahead._online_compiled is not None  # pylint: disable=protected-access
  assert ahead.steps == jitted.steps == BATCH
  assert _tree_allclose(ahead.save(), jitted.save(), atol=1e-6)


@pytest.mark.parametrize('updates_per_env_step', [0.5, 1.0, 3.0])
def test_updates_are_paid_for_by_transitions(updates_per_env_step):
  """updates_per_env_step updates per transition taken, never more."""
  config = _config(offline_steps=0, rate_limit_tolerance_steps=8,
                   updates_per_env_step=updates_per_env_step)
  queue = learning.replay_queue_size(config)
  takes = [_rows(_batch(seed=s, size=n)) for s, n in
           enumerate([1, queue, 3, 1, 1])]
  learner, _ = _learner(config, _batch(size=100),
                        replay_iterator=_reader(*takes))
  taken = 0
  for take in takes:
    learner.step()
    taken += len(take)
    assert learner.steps == int(taken * updates_per_env_step)
    assert learner.owed_updates == pytest.approx(
        taken * updates_per_env_step - learner.steps)
  assert learner.num_online == taken


def test_online_buffer_grows_then_keeps_the_newest(monkeypatch):
  """Doubling up to max_replay_size, then FIFO; save and restore round-trip."""
  monkeypatch.setattr(learning, 'INITIAL_ONLINE_CAPACITY', 4)
  config = _config(offline_steps=0, rate_limit_tolerance_steps=3,
                   max_replay_size=10, online_steps=100)
  data = _batch(seed=6, size=14)
  rows = _rows(data)
  takes = [rows[i:i + 3] for i in range(0, 12, 3)] + [rows[12:]]
  learner, _ = _learner(config, _batch(size=100),
                        replay_iterator=_reader(*takes))
  sizes = []
  for _ in takes:
    learner.step()
    sizes.append(learner._online.rewards.shape[0])  # pylint: disable=protected-access
  assert sizes == [4, 8, 10, 10, 10] and learner.steps == 14
  assert learner.rows_taken == 14  # Also the 4 the ring dropped.
  held = learner.online_transitions()  # The newest 10, oldest first.
  np.testing.assert_array_equal(held.observations, data.observations[4:])
  np.testing.assert_array_equal(held.rewards, data.rewards[4:])
  other, _ = _learner(config, _batch(size=100),
                      replay_iterator=_reader(rows[:2]))
  other.restore_online_transitions(held, owed_updates=0.0,
                                   rows_taken=learner.rows_taken)
  assert other.num_online == 10 and other.rows_taken == 14
  other.step()  # Two more: the two oldest go.
  assert other.rows_taken == 16
  again = other.online_transitions()
  np.testing.assert_array_equal(again.observations[:8],
                                data.observations[6:])
  np.testing.assert_array_equal(again.observations[8:], data.observations[:2])


def test_rows_of_the_wrong_size_are_a_clear_error():
  config = _config(offline_steps=0)
  learner, _ = _learner(config, _batch(size=100),
                        replay_iterator=_reader(np.zeros((2, 7), np.float32)))
  with pytest.raises(ValueError, match='replay rows must have'):
    learner.step()


def test_learner_fits_value_of_constant_reward():
  # Reward r on every step, never terminal: Q = V = r / (1 - gamma) for any
  # policy and expectile. Faster rates than the paper's so it converges here.
  reward, discount = 1.0, 0.8
  value = reward / (1.0 - discount)  # 5.0
  config = _config(discount=discount, offline_steps=3000,
                   offline_steps_per_call=500, critic_learning_rate=3e-3,
                   value_learning_rate=3e-3, target_update_rate=0.05)
  data = _batch(size=1000, rewards=reward)
  learner, logger = _learner(config, data)
  while learner.in_offline_phase:
    learner.step()
  networks = iql_networks.make_networks(_spec(), config)
  v = networks.value.apply(learner.get_variables(['value'])[0],
                           data.observations)
  q1, q2 = networks.critic.apply(learner.get_variables(['critic'])[0],
                                 data.observations, data.actions)
  for estimate in (v, q1, q2):
    np.testing.assert_allclose(np.mean(estimate), value, rtol=0.03)
    assert np.std(estimate) < 0.05 * value
  first, last = logger.data[0], logger.data[-1]
  # Both losses start near 0 (V and Q start near 0), so the first chunk's
  # mean is the scale: they must fall by an order of magnitude from it.
  assert last['critic_loss'] < 0.05 * first['critic_loss']
  assert last['value_loss'] < 0.1 * first['value_loss']

