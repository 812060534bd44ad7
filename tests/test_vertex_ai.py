"""`--lp_launch_type=vertex_ai`: Launchpad's real launch path, no cloud.

The program is this project's own (`program.make_program`, pen-binary-v0,
small settings) and goes through the real `lp.launch(...,
launch_type='vertex_ai', xm_resources=...)`: Launchpad's grouping into worker
pools, address binding, node pickling and Dockerfiles; xmanager 0.1.5's
experiment (a local sqlite file), packaging, Dockerfile and build context,
and its translation of the jobs into Vertex AI worker pool specs. Replaced,
at xmanager's boundary, are only the calls that reach Google Cloud or a
Docker daemon (`install_fakes`): the credentials lookup
(`google.auth.default`), the IAM service-account set-up, `docker build`
and `docker push` (the build context is copied instead), and
`aiplatform.CustomJob` (its arguments are recorded instead of submitted).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import cloudpickle
import pytest

from iql_acme import envs
from iql_acme import multi_machine
from iql_acme import placement
from iql_acme import program as program_lib
from iql_acme import run_setup

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV_NAME = 'pen-binary-v0'
NUM_ACTORS = 3
PROJECT = 'iql-test-project'
BUCKET = 'iql-test-bucket'
SERVICE_ACCOUNT = f'xmanager@{PROJECT}.iam.gserviceaccount.com'
# Four distinct machines: the most worker pools Vertex AI takes.
VERTEX = multi_machine.VertexConfig(
    learner_machine_type='n1-standard-16', learner_accelerator='T4',
    learner_accelerator_count=2, replay_machine_type='n1-highmem-8',
    actor_machine_type='n1-standard-4', evaluator_machine_type='n1-highcpu-16')
SUBPROCESS_TIMEOUT_S = 600


# --- The fakes (also installed by the launcher subprocess below) -----------

def install_fakes(capture_dir: str):
  """Replaces the Google Cloud and Docker calls; returns the started patchers.

  Everything the launch would have sent lands in `capture_dir`: each image's
  build context (`image_<n>/`, with its Dockerfile), `pushed.json` and
  `custom_jobs.json` (the worker pools Vertex AI would have received).
  """
  from google.auth import credentials  # pylint: disable=g-import-not-at-top
  from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top
  from google.cloud import aiplatform_v1  # pylint: disable=g-import-not-at-top
  from xmanager.cloud import auth  # pylint: disable=g-import-not-at-top
  from xmanager.cloud import docker_lib  # pylint: disable=g-import-not-at-top
  from xmanager.xm_local.storage import database  # pylint: disable=g-import-not-at-top

  capture = pathlib.Path(capture_dir)
  capture.mkdir(parents=True, exist_ok=True)
  built, pushed, jobs = [], [], []

  def build_docker_image(image, directory, dockerfile=None, **unused):
    del unused
    target = capture / f'image_{len(built)}'
    shutil.copytree(directory, target)
    shutil.copy(dockerfile or os.path.join(directory, 'Dockerfile'),
                target / 'Dockerfile')
    built.append({'image': image, 'context': str(target)})
    (capture / 'built.json').write_text(json.dumps(built))
    return image

  def push_docker_image(image):
    pushed.append(image)
    (capture / 'pushed.json').write_text(json.dumps(pushed))
    return image

  class FakeCustomJob:
    """Stands in for aiplatform.CustomJob: records, submits nothing."""
    resource_name = f'projects/{PROJECT}/locations/us-central1/customJobs/1'

    def __init__(self, **kwargs):
      pools = []
      for pool in kwargs['worker_pool_specs']:
        machine = pool.machine_spec
        pools.append({
            'machine_type': machine.machine_type,
            'accelerator_type': aiplatform_v1.AcceleratorType(
                machine.accelerator_type).name,
            'accelerator_count': machine.accelerator_count,
            'replica_count': pool.replica_count,
            'image_uri': pool.container_spec.image_uri,
        })
      jobs.append({'display_name': kwargs['display_name'], 'pools': pools,
                   'staging_bucket': kwargs['staging_bucket']})
      self._write()

    def _write(self):
      (capture / 'custom_jobs.json').write_text(json.dumps(jobs))

    def run(self, **kwargs):
      jobs[-1]['run'] = {k: kwargs[k] for k in ('sync', 'service_account')}
      self._write()

    def wait_for_resource_creation(self):
      pass

    def _dashboard_uri(self):
      return 'https://console.cloud.google.com/vertex-ai/fake'

  db = database.Database(database.SqliteSettings(
      path=str(capture / 'xmanager.sqlite3')))
  patchers = [
      mock.patch.dict(os.environ, {'GOOGLE_CLOUD_BUCKET_NAME': BUCKET}),
      mock.patch('google.auth.default', return_value=(
          credentials.AnonymousCredentials(), PROJECT)),
      mock.patch.object(auth, 'get_service_account',
                        return_value=SERVICE_ACCOUNT),
      mock.patch.object(docker_lib, 'is_docker_installed', return_value=True),
      mock.patch.object(docker_lib, 'build_docker_image', build_docker_image),
      mock.patch.object(docker_lib, 'push_docker_image', push_docker_image),
      mock.patch.object(aiplatform, 'CustomJob', FakeCustomJob),
      mock.patch.object(database, 'database', lambda: db),
  ]
  for patcher in patchers:
    patcher.start()
  return patchers


def read_capture(capture_dir) -> dict:
  capture = pathlib.Path(capture_dir)
  load = lambda name: json.loads((capture / name).read_text())
  return {'built': load('built.json'), 'pushed': load('pushed.json'),
          'jobs': load('custom_jobs.json')}


def image_of(capture, pool) -> pathlib.Path:
  """The build context (with its Dockerfile) of a pool's image."""
  [context] = [b['context'] for b in capture['built']
               if b['image'] == pool['image_uri']]
  return pathlib.Path(context)


# --- The launch, in this process --------------------------------------------

@pytest.fixture(scope='module')
def launched(tmp_path_factory):
  """Builds the real program and launches it on the faked cloud."""
  root = tmp_path_factory.mktemp('vertex')
  capture_dir = root / 'capture'
  # Launchpad's vertex_ai launch installs SIGINT / SIGQUIT handlers.
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGQUIT)}
  patchers = install_fakes(str(capture_dir))
  try:
    config = run_setup.make_config(ENV_NAME, offline_steps=20,
                                   online_steps=200, batch_size=16)
    spec = envs.make_environment(ENV_NAME, 0)
    dataset_fn = multi_machine.make_offline_dataset_fn(
        ENV_NAME, None, spec.observation_spec().shape[0],
        spec.action_spec().shape[0])
    run = program_lib.RunConfig(env_name=ENV_NAME,
                                workdir=str(root / 'workdir'),
                                num_actors=NUM_ACTORS, eval_every=10,
                                eval_episodes=2)
    program = program_lib.make_program(config, dataset_fn, run)
    lines = multi_machine.launch(program, VERTEX,
                                 staging_dir=str(root / 'staging'))
  finally:
    for patcher in patchers:
      patcher.stop()
    for signum, handler in handlers.items():
      signal.signal(signum, handler)
  return {'program': program, 'lines': lines, 'capture': read_capture(
      capture_dir), 'root': root}


def _pool_of_groups(program):
  """group -> {worker pool index}, from the addresses Launchpad bound."""
  pools = {}
  for group, nodes in program.groups.items():
    for node in nodes:
      [address] = node.addresses
      builder = address._address_builder  # pylint: disable=protected-access
      pools.setdefault(group, set()).add(int(builder._cluster[-1]))  # pylint: disable=protected-access
  return pools


def test_one_custom_job_with_vertex_ai_pool_rules(launched):
  [job] = launched['capture']['jobs']
  pools = job['pools']
  assert 1 <= len(pools) <= multi_machine.MAX_WORKER_POOLS
  assert pools[0]['replica_count'] == 1  # Vertex AI: the first pool's chief.
  nodes = sum(len(n) for n in launched['program'].groups.values())
  assert nodes == 4 + NUM_ACTORS
  assert sum(p['replica_count'] for p in pools) == nodes
  assert job['staging_bucket'] == f'gs://{BUCKET}'
  assert job['run'] == {'sync': False, 'service_account': SERVICE_ACCOUNT}


def test_each_group_gets_its_machine_and_only_the_learner_a_gpu(launched):
  program, [job] = launched['program'], launched['capture']['jobs']
  pools = job['pools']
  where = _pool_of_groups(program)
  assert set(where) == {'replay', 'counter', 'learner', 'actor', 'evaluator'}
  assert all(len(indices) == 1 for indices in where.values())
  where = {group: pools[i] for group, (i,) in where.items()}
  expected = {'learner': 'n1-standard-16', 'replay': 'n1-highmem-8',
              'actor': 'n1-standard-4', 'evaluator': 'n1-highcpu-16',
              'counter': 'n1-highcpu-16'}
  assert {g: p['machine_type'] for g, p in where.items()} == expected
  assert where['learner']['accelerator_type'] == 'NVIDIA_TESLA_T4'
  assert where['learner']['accelerator_count'] == 2
  for group in multi_machine.CPU_GROUPS:
    assert where[group]['accelerator_count'] == 0, group
    assert where[group]['accelerator_type'] == 'ACCELERATOR_TYPE_UNSPECIFIED'
  # One node per replica: the pool of a group holds exactly its nodes.
  assert where['learner']['replica_count'] == 1
  assert where['replay']['replica_count'] == 1
  assert where['actor']['replica_count'] == NUM_ACTORS
  assert where['evaluator'] is where['counter']
  assert where['evaluator']['replica_count'] == 2
  assert launched['lines'] == [
      'replay: 1 node(s) on n1-highmem-8',
      'counter: 1 node(s) on n1-highcpu-16',
      'learner: 1 node(s) on n1-standard-16 + 2 x T4',
      f'actor: {NUM_ACTORS} node(s) on n1-standard-4',
      'evaluator: 1 node(s) on n1-highcpu-16']


def test_images_python_3_10_with_the_pinned_stack_and_the_project(launched):
  capture, [job] = launched['capture'], launched['capture']['jobs']
  assert sorted(b['image'] for b in capture['built']) == sorted(
      capture['pushed'])
  assert {p['image_uri'] for p in job['pools']} == set(capture['pushed'])
  assert all(image.startswith(f'gcr.io/{PROJECT}/')
             for image in capture['pushed'])
  pins = multi_machine.requirement_lines(multi_machine.REQUIREMENTS_FILE)
  gpu_pins = multi_machine.requirement_lines(
      multi_machine.GPU_REQUIREMENTS_FILE)
  for must in ('dm-launchpad==0.5.0', 'protobuf==3.19.6', 'xmanager==0.1.5',
               'tensorflow-cpu==2.8.4', 'jax==0.4.30'):
    assert must in pins
  for pool in job['pools']:
    context = image_of(capture, pool)
    dockerfile = (context / 'Dockerfile').read_text()
    assert re.search(r'^FROM python:3\.10$', dockerfile, re.M), dockerfile
    assert 'apt-get -y install libpython' not in dockerfile
    [workdir] = re.findall(r'^WORKDIR (\S+)$', dockerfile, re.M)
    for step in (f'COPY {workdir}/requirements.txt requirements.txt',
                 'RUN python -m pip install -r requirements.txt',
                 f'RUN python -m pip install --no-deps '
                 f'{multi_machine.D4RL_REQUIREMENT}',
                 f'RUN echo "/{workdir}" > ', 'iql_acme_repo.pth',
                 'echo "import iql_acme" > '):
      assert step in dockerfile, step
    assert 'pip install xmanager' not in dockerfile  # Pinned in requirements.
    assert 'python -m process_entry --data_file=job.pkl' in (
        context / 'entrypoint.sh').read_text()
    project = context / workdir
    requirements = (project / 'requirements.txt').read_text().split()
    gpu = pool['accelerator_count'] > 0
    assert requirements == pins + (gpu_pins if gpu else [])
    env = placement.GPU_LEARNER_ENV if gpu else placement.CPU_NODE_ENV
    for key, value in env.items():
      assert f'ENV {key}="{value}"' in dockerfile
    other = placement.CPU_NODE_ENV if gpu else placement.GPU_LEARNER_ENV
    assert not any(f'ENV {key}=' in dockerfile for key in other)
    for path in ('process_entry.py', 'job.pkl', 'iql_acme/__init__.py',
                 'iql_acme/program.py', 'iql_acme/multi_machine.py',
                 f'iql_acme/data/assets/{ENV_NAME}'):
      assert (project / path).exists(), path
    assert not list(project.rglob('__pycache__'))


def test_makefile_installs_the_same_d4rl():
  makefile = (REPO / 'Makefile').read_text()
  assert f'--no-deps {multi_machine.D4RL_REQUIREMENT}' in makefile


def test_every_node_function_pickles(launched):
  for group, nodes in launched['program'].groups.items():
    for node in nodes:
      assert cloudpickle.loads(cloudpickle.dumps(node.function)), group


_LOAD_JOB = textwrap.dedent('''
    # As in the image: Launchpad's process_entry puts the working directory
    # (the copied code) on sys.path; the .pth files the Dockerfile writes
    # become explicit lines here (python -S runs no .pth file of the venv,
    # which points at the repository instead).
    import functools, os, sys
    load, site = sys.argv[1] == 'load', sys.argv[2:]
    sys.path[:0] = [os.getcwd()] + site
    import iql_acme
    assert iql_acme.__file__.startswith(os.getcwd()), iql_acme.__file__
    import cloudpickle
    functions = cloudpickle.load(open('job.pkl', 'rb'))
    found = []
    def search(value, depth=0):
      if isinstance(value, functools.partial):
        if value.func.__name__ == 'load_embedded_dataset':
          found.append(value)
      elif depth < 4 and isinstance(value, (tuple, list)):
        for item in value:
          search(item, depth + 1)
      elif depth < 4 and hasattr(value, '__dict__'):
        for item in vars(value).values():
          search(item, depth + 1)
    for function in functions:
      search(function.__self__)  # The node: its constructor's arguments.
    for dataset_fn in found if load else []:
      transitions, _ = dataset_fn()
      assert transitions.size > 0
    print('NODES', len(functions), 'DATASETS', len(found))
''')


def test_job_files_unpickle_from_the_image_code(launched):
  """Each image's job.pkl loads in a fresh process from the copied code.

  The learner's dataset loader finds the embedded stand-in inside the copied
  package (not at the launcher's path): it is called there.
  """
  capture, [job] = launched['capture'], launched['capture']['jobs']
  site = [p for p in sys.path if p.endswith('site-packages')]
  replicas = 0
  for pool in job['pools']:
    context = image_of(capture, pool)
    [workdir] = re.findall(r'^WORKDIR (\S+)$',
                           (context / 'Dockerfile').read_text(), re.M)
    learner = pool['accelerator_count'] > 0
    result = subprocess.run(
        [sys.executable, '-S', '-c', _LOAD_JOB,
         'load' if learner else 'count', *site],
        cwd=context / workdir, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert result.returncode == 0, result.stderr[-3000:]
    nodes, datasets = re.search(r'NODES (\d+) DATASETS (\d+)',
                                result.stdout).groups()
    assert int(nodes) == pool['replica_count']
    if learner:  # Its loader ran, in the copied package.
      assert int(datasets) == 1
    replicas += int(nodes)
  assert replicas == sum(p['replica_count'] for p in job['pools'])


# --- Checks without a launch -------------------------------------------------

@pytest.mark.parametrize('change, message', [
    ({'learner_accelerator': 'H200'}, '--vertex_learner_accelerator=H200'),
    ({'learner_accelerator_count': 3}, '--vertex_learner_accelerator_count=3'),
    ({'learner_accelerator': 'A100', 'learner_machine_type': 'n1-standard-8'},
     'leave the flag unset'),
    ({'learner_accelerator': 'A100', 'learner_accelerator_count': 32},
     '--vertex_learner_accelerator_count=32'),
    ({'actor_machine_type': 'n2-standard-4'},
     '--vertex_actor_machine_type=n2-standard-4'),
    ({'learner_machine_type': 'e2-small'}, '--vertex_learner_machine_type'),
])
def test_bad_vertex_config_is_one_clear_error(change, message):
  import dataclasses  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=re.escape(message)):
    multi_machine.check_config(dataclasses.replace(VERTEX, **change))


def test_good_configs_pass_and_map_to_machines():
  multi_machine.check_config(VERTEX)
  multi_machine.check_config(multi_machine.VertexConfig())
  cpu_learner = multi_machine.VertexConfig(learner_accelerator='none')
  multi_machine.check_config(cpu_learner)
  assert multi_machine.job_requirements(cpu_learner)['learner'].accelerator is None
  a100 = multi_machine.VertexConfig(learner_accelerator='A100',
                                    learner_accelerator_count=4)
  multi_machine.check_config(a100)
  assert multi_machine.group_machine_types(a100)['learner'] == 'a2-highgpu-4g'


def test_paths_must_be_on_the_bucket(pen_random_npz):
  multi_machine.check_shared_path('workdir', '/gcs/bucket/runs/x')
  for bad in ('/tmp/runs/x', '/gcs/', 'runs/x', '/gcsx/b/runs'):
    with pytest.raises(ValueError, match='--workdir=.* on a bucket'):
      multi_machine.check_shared_path('workdir', bad)
  with pytest.raises(ValueError, match='--dataset=.* on a bucket'):
    multi_machine.make_offline_dataset_fn(ENV_NAME, pen_random_npz, 45, 24)


# --- The command -------------------------------------------------------------

_RUN_LAUNCHER = textwrap.dedent('''
    import runpy, sys
    capture, shared_root, *argv = sys.argv[1:]
    sys.path.insert(0, 'tests')
    import test_vertex_ai
    test_vertex_ai.install_fakes(capture)
    from iql_acme import multi_machine
    multi_machine.SHARED_ROOT = shared_root  # Stands in for /gcs/.
    sys.argv = ['launch/run_finetune.py', *argv]
    runpy.run_path('launch/run_finetune.py', run_name='__main__')
''')


def _launcher(tmp_path, *flags):
  shared = tmp_path / 'gcs'
  (shared / BUCKET).mkdir(parents=True, exist_ok=True)
  args = [sys.executable, '-c', _RUN_LAUNCHER, str(tmp_path / 'capture'),
          f'{shared}/', f'--env={ENV_NAME}', '--lp_launch_type=vertex_ai',
          '--num_actors=2', '--offline_steps=20', '--online_steps=100', *flags]
  if not any(f.startswith('--workdir') for f in flags):
    args.append(f'--workdir={shared}/{BUCKET}/runs/pen')
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                        timeout=SUBPROCESS_TIMEOUT_S)


def test_command_submits_and_exits_0(tmp_path):
  result = _launcher(tmp_path, '--vertex_learner_accelerator=V100')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'submitted: iql_finetune to Vertex AI' in result.stdout
  assert '  learner: 1 node(s) on n1-standard-8 + 1 x V100' in result.stdout
  assert '  actor: 2 node(s) on n1-standard-4' in result.stdout
  [job] = read_capture(tmp_path / 'capture')['jobs']
  # Defaults: replay on its own machine type; counter, actors, evaluator share
  # n1-standard-4 and so one pool; the learner its own: 3 pools.
  assert [(p['machine_type'], p['replica_count'], p['accelerator_type'])
          for p in job['pools']] == [
              ('n1-highmem-4', 1, 'ACCELERATOR_TYPE_UNSPECIFIED'),
              ('n1-standard-4', 4, 'ACCELERATOR_TYPE_UNSPECIFIED'),
              ('n1-standard-8', 1, 'NVIDIA_TESLA_V100')]


@pytest.mark.parametrize('flag, message', [
    ('--workdir=/tmp/iql-vertex-not-shared', '--workdir=/tmp/iql-vertex-not-'
     'shared: with --lp_launch_type=vertex_ai every machine must see it'),
    ('--vertex_learner_accelerator=H100', '--vertex_learner_accelerator=H100 '
     'is not a GPU type'),
])
def test_command_bad_flags_exit_2(tmp_path, flag, message):
  result = _launcher(tmp_path, flag)
  assert result.returncode == 2, result.stderr[-3000:]
  [line] = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert message in line
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'capture' / 'custom_jobs.json').exists()
