"""MPPI that plans with the MuJoCo simulator itself, for the Adroit pen task.

The planner rolls out K perturbed copies of its current action plan from the
environment's exact physics state with `mujoco.rollout` on the environment's
own `MjModel` (it carries the env's actuator gains and the sampled target
orientation), scores them with a cost shaped from the pen's orientation and
position error, and moves the plan to the exponentially weighted mean of the
samples (Williams et al. 2017). The plan is warm-started by shifting it one
step after every executed action.

Smoothing options (`MPPIConfig`): noise drawn at knots every
`noise_knot_every` steps and interpolated linearly in time, a cost
`action_change_cost * sum |a_t - a_{t-1}|^2` on the planned actions (starting
from the previously executed action), and an exponential filter
`a = action_filter * a_prev + (1 - action_filter) * plan[0]` on the executed
action. Per-step white noise (the default) makes jerky actions that a
policy cannot imitate.

One subtlety matters for the cost: `AdroitHandPenEnv.step` runs `frame_skip`
`mj_step`s and then reads `xpos`/`site_xpos`, which `mj_step` computed *before*
its last integration. Reward and observation therefore describe the state one
substep before the end of the step, and that is the state the planner scores.
"""

import copy
import dataclasses
from typing import Callable, Optional

import mujoco
from mujoco import rollout
import numpy as np

FULL_PHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS

# Success test of the pen task (gymnasium-robotics / mj_envs `goal_achieved`).
GOAL_DISTANCE = 0.075
GOAL_ORIENTATION_DOT = 0.95
# Below this height of the pen's centre it has left the palm (the dense
# reward's `dropping_pen` test); nothing recovers from there.
DROP_HEIGHT = 0.075
_MIN_COST_SCALE = 1e-8  # keeps the softmax finite when all samples tie


def _quat_to_mat(quat: np.ndarray) -> np.ndarray:
  mat = np.zeros(9)
  mujoco.mju_quat2Mat(mat, np.asarray(quat, np.float64))
  return mat.reshape(3, 3)


def _axis_rotations(axis: int, angles: np.ndarray) -> np.ndarray:
  """Rotation matrices [..., 3, 3] about a coordinate axis."""
  c, s = np.cos(angles), np.sin(angles)
  one, zero = np.ones_like(angles), np.zeros_like(angles)
  if axis == 0:
    rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
  elif axis == 1:
    rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
  else:
    rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
  return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


class PenGeometry:
  """Pen pose from its six joints (3 slides, 3 hinges), vectorised over states.

  Mirrors `mj_kinematics` for the `Object` body: slides along the body's
  initial axes, then hinges about x, y, z composed in joint order. The pen
  axis is the unit vector from `object_bottom` to `object_top`, as in the env.
  """

  def __init__(self, model: mujoco.MjModel):
    body = model.body('Object')
    self.qpos_start = int(model.jnt_qposadr[model.joint('OBJTx').id])
    self.body_pos = np.array(body.pos)
    self.body_rot = _quat_to_mat(body.quat)
    top = model.site('object_top').pos
    bottom = model.site('object_bottom').pos
    axis = np.asarray(top - bottom, np.float64)
    self.local_axis = axis / np.linalg.norm(axis)
    # Target pose: read from a scratch MjData so it follows whatever the env
    # wrote into `model.body_quat` at reset.
    scratch = mujoco.MjData(model)
    mujoco.mj_kinematics(model, scratch)
    target_axis = (scratch.site_xpos[model.site('target_top').id] -
                   scratch.site_xpos[model.site('target_bottom').id])
    self.target_axis = target_axis / np.linalg.norm(target_axis)
    self.goal_pos = scratch.site_xpos[model.site('eps_ball').id].copy()

  def pose(self, qpos: np.ndarray):
    """Pen centre and unit axis, each [..., 3], from full qpos [..., nq]."""
    joints = qpos[..., self.qpos_start:self.qpos_start + 6]
    pos = self.body_pos + joints[..., :3] @ self.body_rot.T
    rot = (self.body_rot @ _axis_rotations(0, joints[..., 3]) @
           _axis_rotations(1, joints[..., 4]) @ _axis_rotations(2, joints[..., 5]))
    return pos, rot @ self.local_axis


@dataclasses.dataclass
class PenCostConfig:
  """Weights of the pen cost; per step unless said otherwise."""
  orientation: float = 1.0    # x (1 - cos angle to target axis)
  position: float = 2.0       # x distance of pen centre to the goal site
  drop: float = 10.0          # pen centre below DROP_HEIGHT
  success: float = 1.0        # bonus (subtracted) when goal_achieved holds
  terminal: float = 5.0       # extra weight of the last planned step
  discount: float = 1.0


def pen_step_cost(pos, axis, target_axis, goal_pos,
                  config: PenCostConfig) -> np.ndarray:
  """Per-step cost [...] from pen centre/axis [..., 3]."""
  distance = np.linalg.norm(pos - goal_pos, axis=-1)
  alignment = np.sum(axis * target_axis, axis=-1)
  achieved = (distance < GOAL_DISTANCE) & (alignment > GOAL_ORIENTATION_DOT)
  return (config.orientation * (1.0 - alignment)
          + config.position * distance
          + config.drop * (pos[..., 2] < DROP_HEIGHT)
          - config.success * achieved)


def pen_cost_from_obs(obs: np.ndarray, config: PenCostConfig) -> np.ndarray:
  """The same per-step cost from pen observations [..., 45] (for reporting).

  obs[24:27] is the pen centre, obs[33:36] its axis, obs[36:39] the target
  axis and obs[39:42] the pen centre minus the goal position.
  """
  pos = obs[..., 24:27]
  goal_pos = pos - obs[..., 39:42]
  return pen_step_cost(pos, obs[..., 33:36], obs[..., 36:39], goal_pos, config)


def pen_dense_reward_from_obs(obs: np.ndarray) -> np.ndarray:
  """mj_envs' dense pen reward from observations (AWAC's `env_reward`)."""
  close_bonus, success_bonus, drop_penalty, close_dot = 10.0, 50.0, 5.0, 0.9
  distance = np.linalg.norm(obs[..., 39:42], axis=-1)
  alignment = np.sum(obs[..., 33:36] * obs[..., 36:39], axis=-1)
  near = distance < GOAL_DISTANCE
  return (-distance + alignment
          + close_bonus * (near & (alignment > close_dot))
          + success_bonus * (near & (alignment > GOAL_ORIENTATION_DOT))
          - drop_penalty * (obs[..., 26] < DROP_HEIGHT))


class PenTrajectoryCost:
  """Cost of planned rollouts: states [K, H, nstate] (scored states) -> [K]."""

  def __init__(self, model: mujoco.MjModel, config: PenCostConfig):
    self.config = config
    self.geometry = PenGeometry(model)
    self._qpos = slice(1, 1 + model.nq)  # FULLPHYSICS state: time, qpos, ...

  def __call__(self, states: np.ndarray) -> np.ndarray:
    pos, axis = self.geometry.pose(states[..., self._qpos])
    step_costs = pen_step_cost(pos, axis, self.geometry.target_axis,
                               self.geometry.goal_pos, self.config)
    horizon = states.shape[1]
    weights = self.config.discount ** np.arange(horizon)
    weights[-1] += self.config.terminal
    return step_costs @ weights


@dataclasses.dataclass
class MPPIConfig:
  num_samples: int = 64
  horizon: int = 15           # env steps
  noise_std: float = 0.15     # in normalised action units ([-1, 1])
  temperature: float = 0.1    # softmax temperature, in units of the cost std
  num_threads: int = 2
  # Physics substeps per env step in the planner's rollouts. Fewer than the
  # env's frame_skip plans on a copy of the model with a longer timestep:
  # proportionally cheaper, slightly less faithful.
  plan_substeps: Optional[int] = None
  # Smoothing (see the module docstring); the defaults switch it off.
  noise_knot_every: int = 1
  action_change_cost: float = 0.0
  action_filter: float = 0.0


def knot_interpolation(horizon: int, every: int) -> np.ndarray:
  """[horizon, knots] weights: linear interpolation between knots every k steps."""
  num_knots = -(-horizon // every) + 1
  weights = np.zeros((horizon, num_knots))
  for t in range(horizon):
    knot, fraction = divmod(t, every)
    weights[t, knot] = 1.0 - fraction / every
    weights[t, knot + 1] = fraction / every
  return weights


class MPPIPlanner:
  """Model-predictive path integral control on normalised actions in [-1, 1].

  Args:
    model: the environment's own `MjModel`.
    cost_fn: maps scored states [K, H, nstate] to costs [K].
    act_mean, act_range: the env's map from [-1, 1] to actuator controls.
    frame_skip: physics substeps per env step.
  """

  def __init__(self, model: mujoco.MjModel,
               cost_fn: Callable[[np.ndarray], np.ndarray],
               act_mean: np.ndarray, act_range: np.ndarray, frame_skip: int,
               config: MPPIConfig, seed: int = 0):
    self.plan_substeps = config.plan_substeps or frame_skip
    if self.plan_substeps != frame_skip:
      env_model = model
      model = copy.copy(env_model)
      model.opt.timestep = (env_model.opt.timestep * frame_skip /
                            self.plan_substeps)
    self.model = model
    self.cost_fn = cost_fn
    self.act_mean = np.asarray(act_mean)
    self.act_range = np.asarray(act_range)
    self.frame_skip = frame_skip
    self.config = config
    self._rng = np.random.default_rng(seed)
    self._datas = [mujoco.MjData(model) for _ in range(config.num_threads)]
    self._state = np.empty(mujoco.mj_stateSize(model, FULL_PHYSICS))
    self.plan = np.zeros((config.horizon, model.nu))
    self.last_costs: Optional[np.ndarray] = None
    self._knots = (None if config.noise_knot_every <= 1 else
                   knot_interpolation(config.horizon, config.noise_knot_every))
    self.previous_action: Optional[np.ndarray] = None

  def reset(self, plan: Optional[np.ndarray] = None):
    self.plan = (np.zeros_like(self.plan) if plan is None
                 else np.array(plan, np.float64))
    self.previous_action = None

  def rollout_costs(self, data: mujoco.MjData, plans: np.ndarray) -> np.ndarray:
    """Costs [K] of open-loop normalised plans [K, H, nu] from `data`'s state."""
    mujoco.mj_getState(self.model, data, self._state, FULL_PHYSICS)
    controls = np.repeat(self.act_mean + plans * self.act_range,
                         self.plan_substeps, axis=1)
    states, _ = rollout.rollout(
        self.model, self._datas, self._state[None], controls,
        initial_warmstart=data.qacc_warmstart[None], persistent_pool=True)
    # Output i is the state after substep i + 1; the env scores the state
    # after frame_skip - 1 substeps of each step (coarse plans: the same
    # fraction of the step, rounded down, at least one substep).
    substeps = self.plan_substeps
    scored = states[:, max(substeps - 2, 0)::substeps]
    return self.cost_fn(scored)

  def act(self, data: mujoco.MjData,
          previous_action: Optional[np.ndarray] = None) -> np.ndarray:
    """Improves the plan from `data`'s state; returns the action to execute.

    `previous_action` is the action executed last (for the change cost and
    the filter); by default the one this planner returned last. Pass it when
    something else acts, e.g. a policy the planner labels (DAgger).
    """
    config = self.config
    if previous_action is not None:
      self.previous_action = np.array(previous_action, np.float64)
    if self.previous_action is None:
      self.previous_action = self.plan[0].copy()
    if self._knots is None:
      noise = self._rng.normal(
          0.0, config.noise_std, (config.num_samples,) + self.plan.shape)
    else:
      knot_noise = self._rng.normal(
          0.0, config.noise_std,
          (config.num_samples, self._knots.shape[1], self.plan.shape[1]))
      noise = np.einsum('tk,skd->std', self._knots, knot_noise)
    noise[0] = 0.0  # keep the unperturbed warm start among the samples
    samples = np.clip(self.plan + noise, -1.0, 1.0)
    costs = self.rollout_costs(data, samples)
    if config.action_change_cost:
      changes = np.diff(samples, axis=1, prepend=np.broadcast_to(
          self.previous_action, (len(samples), 1, samples.shape[2])))
      costs = costs + config.action_change_cost * np.sum(
          np.square(changes), axis=(1, 2))
    scale = config.temperature * max(float(np.std(costs)), _MIN_COST_SCALE)
    weights = np.exp(-(costs - costs.min()) / scale)
    weights /= weights.sum()
    self.plan = np.tensordot(weights, samples, axes=1)
    self.last_costs = costs
    action = (config.action_filter * self.previous_action +
              (1.0 - config.action_filter) * self.plan[0])
    self.previous_action = action.copy()
    # Warm start for the next step: shift by one, repeat the last action.
    self.plan = np.concatenate([self.plan[1:], self.plan[-1:]], axis=0)
    return action

