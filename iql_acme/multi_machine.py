"""The program on Google Cloud: Launchpad 0.5's `vertex_ai` launcher.

`launch(program, VertexConfig(...))` builds what Launchpad's `vertex_ai`
launcher needs per node group (`lp.DockerConfig`: the project's code, a pip
requirements file, hardware) and calls `lp.launch(program,
launch_type='vertex_ai', xm_resources=...)`. Launchpad then, through
xmanager 0.1.5, builds one Docker image per distinct group configuration,
pushes it to the project's Container Registry and submits one Vertex AI
custom job whose worker pools run the nodes; `lp.launch` returns (None) once
the job is submitted, and the nodes run on Google Cloud until the evaluator
stops the program (Launchpad cancels the job then).

Placement (each group on machines of its own kind; groups whose machine,
requirements and code are identical share a worker pool, at most 4 pools):

* learner: `learner_machine_type` with `learner_accelerator_count` GPUs of
  type `learner_accelerator` (or none); its image adds the JAX CUDA plugin
  (requirements-gpu.txt) and lets JAX allocate GPU memory as it goes;
* replay (Reverb), actors, evaluator and counter: CPU machines
  (`JAX_PLATFORMS=cpu`), the counter on the evaluator's machine type.

Every node's files are on one bucket: Vertex AI mounts `gs://BUCKET` at
`/gcs/BUCKET` on each machine, so `--workdir` (logs, checkpoints, replay
checkpoints, summary.json) and any `--dataset` path must be under `/gcs/`.
The launcher itself also reads and prepares the workdir (resume, stale-file
clean-up), so the bucket must be mounted at the same path where it runs.

Images: Launchpad's own Dockerfile (base `python:<launcher's version>`, so
Python 3.10) with our requirements file, adjusted to build and to match the
Makefile's venv (`_adjust_instructions`). Imports xmanager and
Launchpad only inside the functions that need them, so the learner node can
unpickle `load_embedded_dataset` cheaply.
"""

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from iql_acme import envs
from iql_acme import placement
from iql_acme import run_setup

LAUNCH_TYPE = 'vertex_ai'
# Where Vertex AI mounts Cloud Storage buckets (Cloud Storage FUSE) on every
# machine of a custom job: gs://BUCKET is /gcs/BUCKET.
SHARED_ROOT = '/gcs/'
LEARNER_GROUP = placement.LEARNER_GROUP
CPU_GROUPS = placement.CPU_GROUPS  # replay, counter, actor, evaluator
# Vertex AI accepts at most 4 worker pools per custom job.
MAX_WORKER_POOLS = 4
NO_ACCELERATOR = 'none'
# GPUs per machine Vertex AI offers for the N1 machines (A100s come on A2
# machines, which xmanager picks from the count: xmanager's own table).
N1_GPU_COUNTS = (1, 2, 4, 8)
DEFAULT_LEARNER_MACHINE_TYPE = 'n1-standard-8'

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(_PACKAGE_DIR)
REQUIREMENTS_FILE = os.path.join(REPO_ROOT, 'requirements.txt')
GPU_REQUIREMENTS_FILE = os.path.join(REPO_ROOT, 'requirements-gpu.txt')
PACKAGE_NAME = os.path.basename(_PACKAGE_DIR)  # iql_acme
# Installed like the Makefile does (its declared dependencies include
# mujoco-py, which cannot work): `pip install --no-deps`.
D4RL_REQUIREMENT = 'd4rl==1.1'
# In the staging directory handed to Launchpad.
CODE_DIR = 'code'
CPU_REQUIREMENTS = 'requirements-cpu.txt'
GPU_REQUIREMENTS = 'requirements-gpu-learner.txt'
# Steps of Launchpad 0.5's Dockerfile that we drop. It runs `apt-get install
# libpython<version>`; Debian, which the python:<version> images are built on,
# has no such package for 3.10 (the images carry their own libpython in
# /usr/local/lib), so the build would stop there. And it installs the newest
# xmanager (and its dependencies) before our requirements, which pin 0.1.5.
_DROPPED_LAUNCHPAD_STEPS = (re.compile(r'RUN apt-get -y install libpython[\d.]+'),
                            re.compile(r'RUN python -m pip install xmanager'))


@dataclasses.dataclass(frozen=True)
class VertexConfig:
  """Machines per node group (Vertex AI machine types, e.g. n1-standard-8)."""
  # None: DEFAULT_LEARNER_MACHINE_TYPE, or the A2 machine for A100s.
  learner_machine_type: Optional[str] = None
  # An xm GPU type (P4, T4, P100, V100, A100) or NO_ACCELERATOR.
  learner_accelerator: str = 'V100'
  learner_accelerator_count: int = 1
  replay_machine_type: str = 'n1-highmem-4'   # 4 vCPUs, 26 GiB for the replay
  actor_machine_type: str = 'n1-standard-4'
  evaluator_machine_type: str = 'n1-standard-4'  # the evaluator and the counter

  @property
  def has_accelerator(self) -> bool:
    return self.learner_accelerator.lower() != NO_ACCELERATOR



def machine_types() -> Dict[str, Tuple[int, int]]:
  """Machine types xmanager can request on Vertex AI: name -> (vCPUs, RAM bytes).

  xmanager derives a CPU machine from cpu and ram requirements
  (`vertex.cpu_ram_to_machine_type`); asking for exactly a type's vCPUs and
  RAM gets exactly that type.
  """
  from xmanager.cloud import vertex  # pylint: disable=g-import-not-at-top
  return dict(vertex._MACHINE_TYPE_TO_CPU_RAM)  # pylint: disable=protected-access


def a100_machine_types() -> Dict[int, str]:
  """A100 count -> the A2 machine Vertex AI (through xmanager) gives it."""
  from xmanager.cloud import vertex  # pylint: disable=g-import-not-at-top
  return dict(vertex._A100_GPUS_TO_MACHINE_TYPE)  # pylint: disable=protected-access


def gpu_types() -> List[str]:
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  return [t.name for t in xm.GpuType]


def check_config(config: VertexConfig):
  """Raises ValueError (one line, naming the flag) for a bad configuration."""
  known = machine_types()
  names = ', '.join(sorted(known))
  for flag, value in (('vertex_replay_machine_type', config.replay_machine_type),
                      ('vertex_actor_machine_type', config.actor_machine_type),
                      ('vertex_evaluator_machine_type',
                       config.evaluator_machine_type)):
    if value not in known:
      raise ValueError(f'--{flag}={value} is not a Vertex AI machine type '
                       f'xmanager can request; choose one of {names}')
  accelerator = config.learner_accelerator
  if config.has_accelerator and accelerator.upper() not in gpu_types():
    raise ValueError(
        f'--vertex_learner_accelerator={accelerator} is not a GPU type; '
        f'choose one of {", ".join(gpu_types())} or {NO_ACCELERATOR}')
  count = config.learner_accelerator_count
  if accelerator.upper() == 'A100':
    if count not in a100_machine_types():
      raise ValueError(f'--vertex_learner_accelerator_count={count}: A100s come '
                       f'{", ".join(map(str, sorted(a100_machine_types())))} '
                       'to a machine')
    if config.learner_machine_type is not None:
      raise ValueError(
          f'--vertex_learner_machine_type={config.learner_machine_type} with '
          f'A100s: Vertex AI puts A100s on A2 machines ('
          f'{a100_machine_types()[count]} for {count}); leave the flag unset')
  elif config.has_accelerator and count not in N1_GPU_COUNTS:
    raise ValueError(f'--vertex_learner_accelerator_count={count}: Vertex AI '
                     f'attaches {", ".join(map(str, N1_GPU_COUNTS))} GPUs to a '
                     'machine')
  if (config.learner_machine_type is not None and
      config.learner_machine_type not in known):
    raise ValueError(f'--vertex_learner_machine_type='
                     f'{config.learner_machine_type} is not a Vertex AI machine '
                     f'type xmanager can request; choose one of {names}')


def check_shared_path(flag: str, path: str):
  """A path every machine sees: under the bucket mount, /gcs/BUCKET/..."""
  path = os.path.abspath(path)
  bucket = path[len(SHARED_ROOT):].split('/')[0]
  if not path.startswith(SHARED_ROOT) or not bucket:
    raise ValueError(
        f'--{flag}={path}: with --lp_launch_type={LAUNCH_TYPE} every machine '
        f'must see it, so it must be on a bucket, {SHARED_ROOT}BUCKET/... '
        '(Vertex AI mounts gs://BUCKET there; mount it at the same path where '
        'you launch, e.g. with gcsfuse)')


def load_embedded_dataset(env_name: str, domain: str, obs_dim: int,
                          act_dim: int):
  """Loads the stand-in dataset shipped in the package, wherever it is installed."""
  return run_setup.load_offline_dataset(
      run_setup.embedded_dataset_dir(env_name), domain, obs_dim, act_dim)


def make_offline_dataset_fn(env_name: str, dataset: Optional[str],
                            obs_dim: int, act_dim: int):
  """Like `run_setup.make_offline_dataset_fn`, for a learner on another machine.

  The embedded stand-in is found inside the package on the learner's machine
  (the launcher's absolute path means nothing there); a dataset file or
  directory must be on the bucket; a D4RL name is downloaded by the learner.
  """
  source = run_setup.resolve_dataset_source(env_name, dataset)
  if source == run_setup.embedded_dataset_dir(env_name):
    return functools.partial(load_embedded_dataset, env_name,
                             envs.domain_of(env_name), obs_dim, act_dim)
  if os.path.exists(source) or os.sep in source:
    check_shared_path('dataset', source)
  return run_setup.make_offline_dataset_fn(env_name, dataset, obs_dim, act_dim)


def group_machine_types(config: VertexConfig) -> Dict[str, str]:
  """The Vertex AI machine type of each node group."""
  if config.has_accelerator and config.learner_accelerator.upper() == 'A100':
    learner = a100_machine_types()[config.learner_accelerator_count]
  else:
    learner = config.learner_machine_type or DEFAULT_LEARNER_MACHINE_TYPE
  return {LEARNER_GROUP: learner, 'replay': config.replay_machine_type,
          'counter': config.evaluator_machine_type,
          'actor': config.actor_machine_type,
          'evaluator': config.evaluator_machine_type}


def job_requirements(config: VertexConfig) -> Dict[str, object]:
  """`xm.JobRequirements` per group: the machine's vCPUs and RAM, GPUs."""
  from xmanager import xm  # pylint: disable=g-import-not-at-top
  known = machine_types()
  requirements = {}
  for group, machine in group_machine_types(config).items():
    resources = {}
    if machine in known:  # An A2 machine follows from the A100 count.
      cpu, ram = known[machine]
      resources = {xm.ResourceType.CPU: cpu, xm.ResourceType.RAM: ram}
    if group == LEARNER_GROUP and config.has_accelerator:
      resources[xm.ResourceType[config.learner_accelerator.upper()]] = (
          config.learner_accelerator_count)
    requirements[group] = xm.JobRequirements(resources)
  return requirements


def requirement_lines(path: str) -> List[str]:
  with open(path) as f:
    return [line.strip() for line in f
            if line.strip() and not line.lstrip().startswith('#')]


def docker_requirements(gpu: bool) -> List[str]:
  """The pip requirements of a node image: the venv's pins (+ the CUDA plugin)."""
  lines = requirement_lines(REQUIREMENTS_FILE)
  if gpu:
    lines += requirement_lines(GPU_REQUIREMENTS_FILE)
  return lines


def stage(config: VertexConfig, directory: str) -> Dict[str, object]:
  """Writes the code and requirements into `directory`; returns `xm_resources`.

  The code directory holds the `iql_acme` package (Launchpad copies it into
  each image's working directory, which its node entry point puts on
  sys.path). One requirements file for the CPU groups and one for a GPU
  learner, so that groups with equal machines share an image and a pool.
  """
  import launchpad as lp  # pylint: disable=g-import-not-at-top
  code = os.path.join(directory, CODE_DIR)
  shutil.copytree(_PACKAGE_DIR, os.path.join(code, PACKAGE_NAME),
                  ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
  files = {}
  for gpu, name in ((False, CPU_REQUIREMENTS), (True, GPU_REQUIREMENTS)):
    files[gpu] = os.path.join(directory, name)
    with open(files[gpu], 'w') as f:
      f.write('\n'.join(docker_requirements(gpu)) + '\n')
  hardware = job_requirements(config)
  return {group: lp.DockerConfig(
      code_directory=code,
      docker_requirements=files[group == LEARNER_GROUP and
                                config.has_accelerator],
      hw_requirements=hardware[group])
          for group in (LEARNER_GROUP, *CPU_GROUPS)}


def _adjust_instructions(instructions: Sequence[str], gpu: bool) -> List[str]:
  """Launchpad's Dockerfile steps, made to build and to match the venv.

  * drops `apt-get install libpython3.10` (no such Debian package; the
    python:3.10 image has its libpython already) and the unpinned
    `pip install xmanager` (requirements.txt pins it);
  * after the code is copied: d4rl with --no-deps, and the two .pth files
    the Makefile writes (the code's directory on sys.path, and `import
    iql_acme`, which installs the Acme/JAX compatibility hook in every
    process before the node's pickle can import Acme);
  * the node environment of `placement`: GPU learner allocating as it
    goes, CPU-only JAX and no CUDA device elsewhere.
  """
  workdir = next(i.split(' ', 1)[1] for i in instructions
                 if i.startswith('WORKDIR '))
  site = '$(python -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])")'
  env = (placement.GPU_LEARNER_ENV if gpu else placement.CPU_NODE_ENV)
  extra = [
      f'RUN python -m pip install --no-deps {D4RL_REQUIREMENT}',
      f'RUN echo "/{workdir}" > {site}/iql_acme_repo.pth && '
      f'echo "import {PACKAGE_NAME}" > {site}/zz_iql_acme_compat.pth',
      *(f'ENV {key}="{value}"' for key, value in sorted(env.items())),
  ]
  adjusted = [i for i in instructions
              if not any(step.fullmatch(i) for step in _DROPPED_LAUNCHPAD_STEPS)]
  at = adjusted.index(f'WORKDIR {workdir}')
  return adjusted[:at] + extra + adjusted[at:]


@contextlib.contextmanager
def _adjusted_docker_executables():
  """Wraps Launchpad's `to_docker_executables` with `_adjust_instructions`."""
  import attr  # pylint: disable=g-import-not-at-top
  from launchpad.nodes.python import xm_docker  # pylint: disable=g-import-not-at-top
  original = xm_docker.to_docker_executables

  def to_docker_executables(nodes, label, docker_config):
    gpu = docker_config.hw_requirements.accelerator is not None
    return [(attr.evolve(container, docker_instructions=_adjust_instructions(
        container.docker_instructions, gpu)), requirements)
            for container, requirements in original(nodes, label, docker_config)]

  xm_docker.to_docker_executables = to_docker_executables
  try:
    yield
  finally:
    xm_docker.to_docker_executables = original


def describe(config: VertexConfig, program) -> List[str]:
  """One line per group: nodes, machine type, GPUs."""
  machines = group_machine_types(config)
  lines = []
  for group, nodes in program.groups.items():
    gpus = (f' + {config.learner_accelerator_count} x '
            f'{config.learner_accelerator.upper()}'
            if group == LEARNER_GROUP and config.has_accelerator else '')
    lines.append(f'{group}: {len(nodes)} node(s) on {machines[group]}{gpus}')
  return lines


def launch(program, config: VertexConfig,
           staging_dir: Optional[str] = None) -> List[str]:
  """Submits the program to Vertex AI; returns the lines describing it.

  `lp.launch` returns None for this launch type once the custom job is
  submitted: there is nothing to wait on here (the job runs on its own).
  """
  import launchpad as lp  # pylint: disable=g-import-not-at-top
  if sys.version_info[:2] != (3, 10):
    raise RuntimeError('the node images use the launcher\'s Python version '
                       '(python:X.Y base image); launch from Python 3.10')
  own_staging = staging_dir is None
  staging_dir = staging_dir or tempfile.mkdtemp(prefix='iqlvertex')
  try:
    resources = stage(config, staging_dir)
    with _adjusted_docker_executables():
      lp.launch(program, launch_type=LAUNCH_TYPE, xm_resources=resources)
  finally:  # The images are built and pushed by now.
    if own_staging:
      shutil.rmtree(staging_dir, ignore_errors=True)
  return describe(config, program)
