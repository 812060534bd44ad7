"""The toy U-maze experiment's --quick run: outputs, ranges, optimal V."""

import importlib.util
import json
import os

import numpy as np
import pytest

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                       'experiments', 'toy_umaze.py')
METHODS = ('optimal', 'onestep', 'iql')
# The maze as the experiment's docstring specifies it, re-derived here.
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))
SLIP_PROB = 0.25
GOAL_REWARD = 10.
DISCOUNT = 0.9


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  spec = importlib.util.spec_from_file_location('toy_umaze', _SCRIPT)
  toy_umaze = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(toy_umaze)
  out = tmp_path_factory.mktemp('toy_umaze')
  returned = toy_umaze.main(['--out', str(out), '--quick', '--seed', '1'])
  with open(out / 'toy_umaze.json') as f:
    return out, json.load(f), returned


def test_writes_figure_and_json(run):
  out, results, returned = run
  assert (out / 'toy_umaze.png').stat().st_size > 10_000
  assert set(METHODS) <= set(results)
  assert results == json.loads(json.dumps(returned))  # same figures
  config = results['config']
  assert config['seed'] == 1 and config['quick']
  assert config['wall_time_s'] > 0 and config['horizon'] > 0


def test_metrics_in_range(run):
  _, results, _ = run
  for method in METHODS:
    metrics = results[method]
    assert -1. <= metrics['v_corr'] <= 1.
    assert metrics['v_mae'] >= 0.
    assert 0. <= metrics['success'] <= 1.
  assert results['optimal']['v_corr'] == pytest.approx(1.)
  assert results['optimal']['v_mae'] == 0.
  # The optimal policy needs ~22 steps on average (17 without slips), so it
  # essentially always reaches the goal within the horizon.
  assert results['optimal']['success'] >= 0.95


def test_value_maps_cover_exactly_the_free_cells(run):
  _, results, _ = run
  layout = results['config']['layout']
  for method in METHODS:
    grid = results[method]['v']
    assert [len(row) for row in grid] == [len(row) for row in layout]
    for row, values in zip(layout, grid):
      for char, value in zip(row, values):
        assert (value is None) == (char == '#')


def _bellman_optimality_residual(layout, v):
  """max_s |V(s) - max_a E[r + gamma * (1 - terminal) V(s')]|, G terminal.

  Written from the experiment's stated dynamics, not its code: the commanded
  move happens w.p. 0.75, else a uniformly random move (commanded one
  included); moves into walls stay put; entering G pays 10 and ends.
  """
  rows, cols = len(layout), len(layout[0])
  residual = 0.
  for r in range(rows):
    for c in range(cols):
      if layout[r][c] in '#G':
        continue
      outcomes = []
      for dr, dc in MOVES:
        nr, nc = r + dr, c + dc
        outcomes.append((r, c) if layout[nr][nc] == '#' else (nr, nc))
      backups = []
      for commanded in range(len(MOVES)):
        q = 0.
        for executed, (nr, nc) in enumerate(outcomes):
          prob = SLIP_PROB / len(MOVES) + (1. - SLIP_PROB) * (
              executed == commanded)
          q += prob * (GOAL_REWARD if layout[nr][nc] == 'G'
                       else DISCOUNT * v[nr][nc])
        backups.append(q)
      residual = max(residual, abs(v[r][c] - max(backups)))
  return residual


def test_optimal_v_satisfies_bellman_optimality(run):
  _, results, _ = run
  layout, v = results['config']['layout'], results['optimal']['v']
  goal_row = next(i for i, row in enumerate(layout) if 'G' in row)
  assert v[goal_row][layout[goal_row].index('G')] == 0.  # terminal
  assert _bellman_optimality_residual(layout, v) < 1e-8
  # Not vacuous: V + 1 misses every backup by at least 1 - gamma = 0.1.
  shifted = [[None if x is None else x + 1. for x in row] for row in v]
  assert _bellman_optimality_residual(layout, shifted) > 0.09
  # Discounting: S, 17 moves from G, is worth something but less than 10.
  start_row = next(i for i, row in enumerate(layout) if 'S' in row)
  start_value = v[start_row][layout[start_row].index('S')]
  assert 0. < start_value < np.nanmax(np.array(v, float)) < GOAL_REWARD
