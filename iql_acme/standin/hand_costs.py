"""MPPI costs for the Adroit door and relocate tasks (`mppi.MPPIPlanner`).

The pen cost reads the pen's pose from joint angles alone; door and relocate
need the palm, handle, ball and target positions, so these costs run MuJoCo's
forward kinematics on every planned state (`SiteKinematics`). Each cost is
mj_envs' dense reward for the task, negated, plus an optional shaping term
(the door's latch), so a planner that lowers it does what the dense reward
asks.
"""

import dataclasses

import mujoco
import numpy as np

# Success tests (mj_envs `goal_achieved`).
DOOR_OPEN_ANGLE = 1.35      # door hinge (rad)
RELOCATE_DISTANCE = 0.1     # ball centre to target (m)
RELOCATE_LIFTED = 0.04      # ball height above which it counts as lifted


class SiteKinematics:
  """Positions of named sites/bodies for planned states [..., nstate]."""

  def __init__(self, model: mujoco.MjModel, sites=(), bodies=()):
    self.model = model
    self._data = mujoco.MjData(model)
    self._qpos = slice(1, 1 + model.nq)  # FULLPHYSICS state: time, qpos, ...
    self._sites = [model.site(name).id for name in sites]
    self._bodies = [model.body(name).id for name in bodies]

  def __call__(self, states: np.ndarray) -> np.ndarray:
    """[..., num_sites + num_bodies, 3]: sites first, then bodies."""
    flat = states.reshape(-1, states.shape[-1])[:, self._qpos]
    out = np.empty((len(flat), len(self._sites) + len(self._bodies), 3))
    data, model = self._data, self.model
    for i, qpos in enumerate(flat):
      data.qpos[:] = qpos
      mujoco.mj_kinematics(model, data)
      out[i, :len(self._sites)] = data.site_xpos[self._sites]
      out[i, len(self._sites):] = data.xpos[self._bodies]
    return out.reshape(states.shape[:-1] + out.shape[1:])


def _discounted_sum(step_costs: np.ndarray, discount: float,
                    terminal: float) -> np.ndarray:
  weights = discount ** np.arange(step_costs.shape[-1])
  weights[-1] += terminal
  return step_costs @ weights


@dataclasses.dataclass
class DoorCostConfig:
  reach: float = 1.0        # palm to handle distance (m); mj_envs: 0.1
  open: float = 1.0         # (hinge - 1.57)^2; mj_envs: 0.1
  latch: float = 1.0        # (1.8 - latch) while the palm is at the handle
  latch_reach: float = 0.05  # palm-handle distance within which latch counts
  bonus: float = 1.0        # scale of mj_envs' 2/8/10 opening bonuses
  discount: float = 1.0
  terminal: float = 0.0


class DoorTrajectoryCost:
  """States [K, H, nstate] -> costs [K] for AdroitHandDoor."""

  def __init__(self, model: mujoco.MjModel, config: DoorCostConfig):
    self.config = config
    self.kinematics = SiteKinematics(model, sites=('S_grasp', 'S_handle'))
    self._hinge = 1 + model.jnt_qposadr[model.joint('door_hinge').id]
    self._latch = 1 + model.jnt_qposadr[model.joint('latch').id]
    self._latch_max = float(model.jnt_range[model.joint('latch').id, 1])

  def step_costs(self, states: np.ndarray) -> np.ndarray:
    c = self.config
    sites = self.kinematics(states)
    reach = np.linalg.norm(sites[..., 0, :] - sites[..., 1, :], axis=-1)
    hinge, latch = states[..., self._hinge], states[..., self._latch]
    bonus = (2.0 * (hinge > 0.2) + 8.0 * (hinge > 1.0) +
             10.0 * (hinge > DOOR_OPEN_ANGLE))
    near = reach < c.latch_reach
    return (c.reach * reach + c.open * np.square(hinge - 1.57)
            + c.latch * near * (self._latch_max - latch)
            + c.latch * ~near * self._latch_max - c.bonus * bonus)

  def __call__(self, states: np.ndarray) -> np.ndarray:
    return _discounted_sum(self.step_costs(states), self.config.discount,
                           self.config.terminal)


@dataclasses.dataclass
class RelocateCostConfig:
  """Weights of the relocate cost, per step.

  This shaping came closest among those tried (see make_hand_demos.py), but
  it does not make a working demonstrator: the planner lifts the ball to the
  target and then overshoots or drops it.
  """
  reach: float = 1.0         # palm to ball (m); mj_envs: 0.1
  grasp: float = 1.0         # mean fingertip to ball (m): close the hand on it
  height: float = 10.0       # per m the held ball is raised (to target's)
  hold: float = 0.08         # palm-ball distance (m) within which it is held
  lift: float = 2.0          # bonus once the ball is lifted; mj_envs: 1
  carry: float = 2.0         # ball to target once lifted; mj_envs: 0.5
  follow: float = 0.5        # palm to target once lifted; mj_envs: 0.5
  bonus: float = 1.0         # scale of mj_envs' 10/20 near-target bonuses
  discount: float = 1.0
  terminal: float = 0.0


_FINGERTIPS = ('S_fftip', 'S_mftip', 'S_rftip', 'S_lftip', 'S_thtip')
BALL_RADIUS = 0.035  # the ball rests at this height


class RelocateTrajectoryCost:
  """States [K, H, nstate] -> costs [K] for AdroitHandRelocate."""

  def __init__(self, model: mujoco.MjModel, config: RelocateCostConfig):
    self.config = config
    self.kinematics = SiteKinematics(
        model, sites=('S_grasp', 'target') + _FINGERTIPS, bodies=('Object',))

  def step_costs(self, states: np.ndarray) -> np.ndarray:
    c = self.config
    sites = self.kinematics(states)
    palm, target, ball = sites[..., 0, :], sites[..., 1, :], sites[..., -1, :]
    tips = sites[..., 2:-1, :]
    to_ball = np.linalg.norm(palm - ball, axis=-1)
    grasp = np.linalg.norm(tips - ball[..., None, :], axis=-1).mean(-1)
    to_target = np.linalg.norm(ball - target, axis=-1)
    raised = np.clip(ball[..., 2] - BALL_RADIUS, 0.0,
                     np.maximum(target[..., 2] - BALL_RADIUS, 0.0))
    raised = raised * (to_ball < c.hold)  # tossing it up does not count
    lifted = ball[..., 2] > RELOCATE_LIFTED
    follow = np.linalg.norm(palm - target, axis=-1)
    bonus = 10.0 * (to_target < RELOCATE_DISTANCE) + 20.0 * (to_target < 0.05)
    return (c.reach * to_ball + c.grasp * grasp - c.height * raised
            + lifted * (c.carry * to_target + c.follow * follow - c.lift)
            - c.bonus * bonus)

  def __call__(self, states: np.ndarray) -> np.ndarray:
    return _discounted_sum(self.step_costs(states), self.config.discount,
                           self.config.terminal)


def door_dense_reward(palm: np.ndarray, handle: np.ndarray, hinge: float,
                      qvel: np.ndarray) -> float:
  """mj_envs' dense door reward (AWAC's `env_reward`) of one state."""
  reward = -0.1 * np.linalg.norm(palm - handle)
  reward += -0.1 * (hinge - 1.57) ** 2
  reward += -1e-5 * np.sum(np.square(qvel))
  reward += 2.0 * (hinge > 0.2) + 8.0 * (hinge > 1.0)
  return float(reward + 10.0 * (hinge > DOOR_OPEN_ANGLE))


def relocate_dense_reward(palm: np.ndarray, ball: np.ndarray,
                          target: np.ndarray) -> float:
  """mj_envs' dense relocate reward (AWAC's `env_reward`) of one state."""
  reward = -0.1 * np.linalg.norm(palm - ball)
  if ball[2] > RELOCATE_LIFTED:
    reward += 1.0 - 0.5 * np.linalg.norm(palm - target)
    reward += -0.5 * np.linalg.norm(ball - target)
  to_target = np.linalg.norm(ball - target)
  return float(reward + 10.0 * (to_target < RELOCATE_DISTANCE)
               + 20.0 * (to_target < 0.05))


def dense_reward(env_name: str, unwrapped) -> float:
  """The dense reward of the env's current state (after a step)."""
  model, data = unwrapped.model, unwrapped.data
  palm = data.site_xpos[model.site('S_grasp').id]
  if env_name.startswith('door'):
    hinge = data.qpos[model.jnt_qposadr[model.joint('door_hinge').id]]
    return door_dense_reward(palm, data.site_xpos[model.site('S_handle').id],
                             hinge, data.qvel)
  return relocate_dense_reward(palm, data.xpos[model.body('Object').id],
                               data.site_xpos[model.site('target').id])


def make_cost(env_name: str, model: mujoco.MjModel, config=None):
  """The trajectory cost of `door-binary-v0` or `relocate-binary-v0`."""
  if env_name.startswith('door'):
    return DoorTrajectoryCost(model, config or DoorCostConfig())
  if env_name.startswith('relocate'):
    return RelocateTrajectoryCost(model, config or RelocateCostConfig())
  raise ValueError(f'no MPPI cost for {env_name!r}: door-binary-v0 and '
                   'relocate-binary-v0 have one (pen: mppi.PenTrajectoryCost)')
