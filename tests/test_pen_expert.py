"""experiments/train_pen_expert.py: TD3+BC from a run's checkpoint."""

import json
import os
import sys

import gymnasium
import gymnasium_robotics  # pylint: disable=unused-import
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
# pylint: disable=g-import-not-at-top,wrong-import-position
import train_pen_expert
from test_rl_demos import _checkpointed_run

from iql_acme import program
from iql_acme import types
from iql_acme.standin import bc
# pylint: enable=g-import-not-at-top,wrong-import-position


def test_dense_reward_is_the_dense_pen_envs_reward():
  """Relabelled from the next observation, it equals what gymnasium-robotics'
  dense AdroitHandPen-v1 pays for the same step (drops included)."""
  gymnasium.register_envs(gymnasium_robotics)
  env = gymnasium.make('AdroitHandPen-v1')
  env.reset(seed=0)
  rng = np.random.default_rng(0)
  paid, relabelled, dropped = [], [], 0
  for _ in range(150):
    observation, reward, _, _, _ = env.step(rng.uniform(-1, 1, 24))
    paid.append(reward)
    relabelled.append(train_pen_expert.dense_reward(observation, 1.0)[0])
    dropped += observation[26] < train_pen_expert.mppi.DROP_HEIGHT
  assert dropped > 0  # random actions drop the pen: the penalty is checked
  np.testing.assert_allclose(relabelled, paid, atol=1e-5)
  scaled = train_pen_expert.dense_reward(np.stack([observation] * 2), 0.1)
  np.testing.assert_allclose(scaled, [0.1 * paid[-1]] * 2, atol=1e-6)


def _run_with_online_data(workdir, num=64):
  """A checkpointed run plus the online transitions its learner saves."""
  networks, state = _checkpointed_run(workdir)
  rng = np.random.default_rng(1)
  rows = types.Transitions(
      observations=rng.normal(size=(num, 45)).astype(np.float32),
      actions=rng.uniform(-1, 1, (num, 24)).astype(np.float32),
      rewards=-np.ones(num, np.float32), discounts=np.ones(num, np.float32),
      next_observations=rng.normal(size=(num, 45)).astype(np.float32),
      episode_ends=np.zeros(num, bool))
  name = program.load_state(workdir)['learner']
  program.save_online_transitions(os.path.join(
      program.checkpoint_dir(workdir), name, program.ONLINE_FILE), rows, 0.0)
  return networks, state


def test_warmup_trains_the_critic_only_then_online_moves_the_policy(tmp_path):
  _run_with_online_data(str(tmp_path / 'run'))
  start_policy = bc.bc_policy(train_pen_expert.rl_demos.iql_policy_as_bc(
      program.load_checkpoint_policy(str(tmp_path / 'run'))[0]))
  observation = np.random.default_rng(2).normal(size=45).astype(np.float32)
  common = ['--policy_workdir', str(tmp_path / 'run'), '--batch_size', '8',
            '--eval_episodes', '1']

  # Critic warm-up alone: the policy written is the checkpoint's, exactly.
  warm = tmp_path / 'warm'
  train_pen_expert.main(common + ['--out', str(warm), '--online_steps', '0',
                                  '--critic_warmup', '6', '--updates', '6',
                                  '--eval_every', '3'])
  rows = list(open(warm / 'curve.csv'))[1:]
  assert len(rows) == 3  # updates 0, 3, 6
  warm_policy = bc.bc_policy(dict(np.load(warm / 'best_policy.npz')))
  np.testing.assert_array_equal(warm_policy(observation),
                                start_policy(observation))

  # Online: one whole 100-step episode and a reset; the policy moves.
  online = tmp_path / 'online'
  train_pen_expert.main(common + ['--out', str(online), '--online_steps',
                                  '120', '--critic_warmup', '4',
                                  '--eval_every', '62',
                                  '--updates_per_step', '1'])
  summary = json.load(open(online / 'summary.json'))
  assert summary['end']['updates'] == 124 and summary['end']['env_steps'] == 120
  assert summary['end']['bc_mse'] > 0 and np.isfinite(summary['end']['q_pi'])
  assert summary['learner_steps'] == 7
  assert (online / 'curve.png').stat().st_size > 0


def test_fixed_checkpoint_critic_moves_only_the_policy(tmp_path):
  _run_with_online_data(str(tmp_path / 'run'))
  out = tmp_path / 'fixed'
  train_pen_expert.main(['--policy_workdir', str(tmp_path / 'run'), '--out',
                         str(out), '--critic', 'checkpoint', '--online_steps',
                         '0', '--critic_warmup', '0', '--updates', '4',
                         '--eval_every', '4', '--eval_episodes', '1',
                         '--batch_size', '8'])
  end = json.load(open(out / 'summary.json'))['end']
  assert 'critic_loss' not in end and end['bc_mse'] > 0


@pytest.mark.parametrize('flags, message', [
    (['--policy_workdir', 'nowhere'], 'is not a folder'),
    (['--critic', 'checkpoint'], 'use it with --online_steps 0'),
    (['--offline_fraction', '1.5'], '--offline_fraction must be in [0, 1]'),
    (['--eval_episodes', '0'], '--eval_episodes must be at least 1'),
])
def test_bad_flags_are_one_clear_error(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    train_pen_expert.parse_args(['--policy_workdir', str(tmp_path), '--out',
                                 str(tmp_path)] + flags)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_a_run_without_online_data_is_one_clear_error(tmp_path):
  _checkpointed_run(str(tmp_path))
  with pytest.raises(SystemExit, match='^error: .*holds no online transitions'):
    train_pen_expert.main(['--policy_workdir', str(tmp_path), '--out',
                           str(tmp_path / 'o')])


def test_a_folder_without_a_checkpoint_is_one_clear_error(tmp_path):
  with pytest.raises(SystemExit, match='^error: .*holds no learner checkpoint'):
    train_pen_expert.main(['--policy_workdir', str(tmp_path), '--out',
                           str(tmp_path / 'o')])
