"""experiments/train_hand_expert.py: TD3+BC from a BC policy on door."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import make_hand_demos  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_hand_expert  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import envs  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top,wrong-import-position

ENV = 'door-binary-v0'


def _work_dir(tmp_path, episodes=2):
  """A make_hand_demos work dir with random-action episodes cached."""
  cache = tmp_path / 'work' / 'planner_episodes_test'
  cache.mkdir(parents=True)
  env = envs.make_gymnasium_env(ENV, seed=0)
  rng = np.random.default_rng(0)
  for i in range(episodes):
    episode = make_hand_demos.run_episode(
        env, ENV, i, lambda o, _: rng.uniform(-1, 1, 28))
    np.savez(cache / f'seed_{i}.npz', **episode)
  params = bc.fit_bc(episode['observations'][:-1], episode['actions'],
                     bc.BCConfig(num_steps=5), log_fn=lambda _: None)
  np.savez(tmp_path / 'bc.npz', **params)
  return str(tmp_path / 'work'), params


def test_the_network_is_bc_policy_and_round_trips(tmp_path):
  _, params = _work_dir(tmp_path, episodes=1)
  net = train_hand_expert.StandardisedMLP(params)
  obs = np.random.default_rng(1).normal(size=(5, 39)).astype(np.float32)
  mean, _ = net.apply(net.initial_params, obs)
  np.testing.assert_allclose(mean, bc.bc_policy(params)(obs), atol=1e-5)
  back = net.as_bc(net.initial_params)
  assert all(np.array_equal(back[k], params[k]) for k in params)


def test_warmup_then_online_steps_write_a_policy(tmp_path):
  work_dir, params = _work_dir(tmp_path)
  out = tmp_path / 'out'
  train_hand_expert.main([
      '--env', ENV, '--bc_params', str(tmp_path / 'bc.npz'), '--work_dir',
      work_dir, '--out', str(out), '--critic_warmup', '4',
      '--online_steps', '210', '--eval_every', '4', '--eval_episodes', '1',
      '--batch_size', '8'])
  assert sorted(os.listdir(out)) == ['best_policy.npz', 'curve.csv',
                                     'curve.png', 'summary.json']
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['cached_episodes'] == 2
  assert summary['end']['updates'] == 4 + 208  # evaluated every 4 updates
  # Rows at 0, 4 (warm-up end), then every 4 updates online. The warm-up
  # trains the critic only: its row has no actor metrics yet.
  import csv  # pylint: disable=g-import-not-at-top
  with open(out / 'curve.csv') as f:
    rows = list(csv.DictReader(f))
  assert [int(r['updates']) for r in rows] == list(range(0, 213, 4))
  assert rows[1]['critic_loss'] and not rows[1]['bc_mse']
  assert rows[-1]['bc_mse']
  best = dict(np.load(out / 'best_policy.npz'))
  assert set(best) == set(params)
  policy = bc.bc_policy(best)
  assert policy(np.zeros(39, np.float32)).shape == (28,)


def test_an_empty_work_dir_is_one_clear_error(tmp_path):
  _, _ = _work_dir(tmp_path, episodes=1)
  with pytest.raises(SystemExit, match='^error: no cached door-binary-v0'):
    train_hand_expert.main([
        '--env', ENV, '--bc_params', str(tmp_path / 'bc.npz'), '--work_dir',
        str(tmp_path / 'empty'), '--out', str(tmp_path / 'o')])


@pytest.mark.parametrize('flags, message', [
    (['--bc_params', 'missing.npz'], 'is not a file'),
    (['--online_steps', '0'], '--online_steps must be at least 1'),
    (['--critic_warmup', '-1'], '--critic_warmup must be >= 0'),
])
def test_bad_flags(tmp_path, capsys, flags, message):
  np.savez(tmp_path / 'bc.npz', w0=np.zeros(1))
  argv = ['--env', ENV, '--bc_params', str(tmp_path / 'bc.npz'),
          '--work_dir', str(tmp_path), '--out', str(tmp_path)] + flags
  with pytest.raises(SystemExit) as exit_info:
    train_hand_expert.parse_args(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
