"""D4RL's maze2d data-collection controller, re-implemented.

The recipe of D4RL's `waypoint_controller.py`: plan a shortest path over the
maze's open cells from the agent's cell to the target's cell, turn it into
waypoints (each intermediate cell jittered by -U(0, 0.2) per axis, the target
cell exact), and drive towards the current waypoint with P-D control
`p_gain * (waypoint - position) + d_gain * velocity`, moving on when within
`solve_threshold` of it. Positions are in D4RL's maze2d frame, where cell
(row, col) lies at about (row, col) (as `iql_acme.envs` maze2d observations).
D4RL plans with Q-iteration on the grid; breadth-first search finds the same
shortest paths.
"""

import collections
from typing import List, Sequence, Tuple

import numpy as np

WALL = '#'
Cell = Tuple[int, int]
_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def open_cells(maze_spec: str) -> List[Cell]:
  """(row, col) of every non-wall cell of a D4RL maze string, sorted."""
  rows = maze_spec.strip().split('\\')
  return sorted((r, c) for r, row in enumerate(rows)
                for c, tile in enumerate(row) if tile != WALL)


def shortest_path(cells: Sequence[Cell], start: Cell, goal: Cell) -> List[Cell]:
  """Cells after `start` up to and including `goal` (BFS, 4-connected)."""
  free = set(cells)
  if start not in free or goal not in free:
    raise ValueError(f'start {start} or goal {goal} is not an open cell')
  parents = {start: None}
  queue = collections.deque([start])
  while queue:
    cell = queue.popleft()
    if cell == goal:
      break
    for dr, dc in _NEIGHBOURS:
      nxt = (cell[0] + dr, cell[1] + dc)
      if nxt in free and nxt not in parents:
        parents[nxt] = cell
        queue.append(nxt)
  if goal not in parents:
    raise ValueError(f'no path from {start} to {goal}')
  path = []
  cell = goal
  while cell != start:
    path.append(cell)
    cell = parents[cell]
  return path[::-1] or [goal]


def nearest_cell(position, cells: Sequence[Cell]) -> Cell:
  """The open cell nearest to `position` (D4RL rounds; this also copes with
  positions that round into a wall)."""
  rounded = (int(round(position[0])), int(round(position[1])))
  if rounded in set(cells):
    return rounded
  array = np.asarray(cells, np.float64)
  return tuple(int(v) for v in
               cells[int(np.argmin(np.sum((array - position) ** 2, axis=1)))])


class WaypointController:
  """P-D control along a BFS path of jittered cell waypoints (D4RL's expert)."""

  def __init__(self, maze_spec: str, rng: np.random.Generator,
               p_gain: float = 10.0, d_gain: float = -1.0,
               solve_threshold: float = 0.1, waypoint_jitter: float = 0.2):
    self.cells = open_cells(maze_spec)
    self._rng = rng
    self.p_gain = p_gain
    self.d_gain = d_gain
    self.solve_threshold = solve_threshold
    self.waypoint_jitter = waypoint_jitter
    self._goal_cell = None
    self.waypoints = np.zeros((0, 2))
    self._index = 0

  def _plan(self, position, goal_cell: Cell):
    path = shortest_path(self.cells, nearest_cell(position, self.cells),
                         goal_cell)
    waypoints = np.array(path, np.float64)
    # As D4RL: jitter every waypoint but the last (the target cell itself).
    waypoints[:-1] -= self._rng.uniform(0.0, self.waypoint_jitter,
                                        size=waypoints[:-1].shape)
    self.waypoints, self._index, self._goal_cell = waypoints, 0, goal_cell

  def action(self, position, velocity, target) -> Tuple[np.ndarray, bool]:
    """(action in [-1, 1]^2, whether the target cell is reached)."""
    position = np.asarray(position, np.float64)
    goal_cell = nearest_cell(target, self.cells)
    if goal_cell != self._goal_cell:
      self._plan(position, goal_cell)
    goal = np.array(goal_cell, np.float64)
    reached = np.linalg.norm(position - goal) < self.solve_threshold
    waypoint = goal if reached else self.waypoints[self._index]
    action = self.p_gain * (waypoint - position) + self.d_gain * np.asarray(
        velocity, np.float64)
    if (not reached and self._index < len(self.waypoints) - 1 and
        np.linalg.norm(position - waypoint) < self.solve_threshold):
      self._index += 1
    return np.clip(action, -1.0, 1.0), bool(reached)
