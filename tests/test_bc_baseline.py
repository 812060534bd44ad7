"""experiments/bc_baseline.py: BC scored with the IQL evaluator's episodes."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))
import bc_baseline  # pylint: disable=g-import-not-at-top,wrong-import-position

from iql_acme import evaluation  # pylint: disable=g-import-not-at-top,wrong-import-position
from iql_acme.standin import bc  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_scores_a_saved_policy_and_fits_on_the_embedded_data(tmp_path):
  rng = np.random.default_rng(0)
  params = bc.fit_bc(rng.normal(size=(64, 45)), rng.uniform(-1, 1, (64, 24)),
                     bc.BCConfig(hidden_sizes=(8,), num_steps=5), seed=0,
                     log_fn=lambda _: None)
  policy_file = tmp_path / 'policy.npz'
  np.savez(policy_file, **params)
  out = tmp_path / 'bc.json'
  bc_baseline.main(['--seeds', '0,1', '--policy', str(policy_file),
                    '--bc_steps', '10', '--eval_episodes', '2',
                    '--out', str(out)])
  result = json.load(open(out))
  assert len(result['policy']) == 1 and len(result['dataset_bc']) == 2
  for r in result['policy'] + result['dataset_bc']:
    assert r['episodes'] == 2
    assert r['normalized_score'] in (0.0, 50.0, 100.0)  # 2 binary episodes
  scores = [r['normalized_score'] for r in result['dataset_bc']]
  assert result['dataset_bc_across_seeds'] == {
      'mean': pytest.approx(np.mean(scores)),
      'se': pytest.approx(evaluation.standard_error(scores)), 'n': 2}


@pytest.mark.parametrize('flags,message', [
    (['--seeds', ''], 'nothing to score'),
    (['--seeds', 'a'], 'argument --seeds: must be comma-separated integers'),
    (['--policy', 'missing.npz'], 'is not a file'),
    (['--bc_steps', '0'], '--bc_steps must be at least 1'),
])
def test_bad_flags_are_one_clear_error(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    bc_baseline.main([*flags, '--out', str(tmp_path / 'x.json')])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'x.json')
