"""The program across separate hosts on this machine: nothing shares localhost.

Each node of the real program (`program.make_program`: replay, counter,
learner, NUM_ACTORS actors, evaluator; pen-binary-v0 with its embedded
dataset, tiny step counts) runs on a host of its own, made by the test
(`cross_host.make_hosts`):

* topology run here as root: one network namespace per node, 10.231.0.N/24
  on a veth joined to a bridge only these namespaces share, every node
  listening on the same port NODE_PORT of its own address. A node that
  assumed it shares localhost with another would reach its own namespace's
  loopback and fail;
* fallback where namespaces cannot be made (not root): distinct loopback
  addresses 127.0.0.N, distinct ports (a weaker check: the hosts share one
  network stack). The run, and every assertion, are the same; the test
  prints which topology ran. `IQL_TEST_HOSTS=loopback` forces it.

Nodes are addressed and started the way Launchpad's vertex_ai launch does it
for one replica per worker host: launch type VERTEX_AI,
`node.bind_addresses(cluster=GROUP, instance=I)` (Launchpad's
`VertextAiAddressBuilder`, which resolves an address from the CLUSTER_SPEC
environment variable each host gets), each group's node functions
serialized by `launchpad.launch.serialization` into its job file, and each
node started by Launchpad's node entry point, on its host:

  ip netns exec NS python .../launchpad/nodes/python/process_entry.py \
      --data_file=DIR/GROUP.pkl        (CLUSTER_SPEC names the task index)

The test is the launcher: the run is supervised (`RunConfig.supervised`),
so the evaluator writes summary.json and ends, and the test stops the rest
(SIGTERM, as `supervisor.Supervisor.stop_all`). While the run goes it reads
each node's sockets (/proc/PID/fd and /proc/PID/net/*, the node's own
namespace): every peer must be a test host's address. (A node that tried
another address would also fail the run: a namespace host has no route out.)
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Optional, Set, Tuple

import cross_host
import launchpad as lp
from launchpad import context as lp_context
from launchpad.launch import serialization
import portpicker
import psutil
import pytest

from iql_acme import envs
from iql_acme import multi_machine
from iql_acme import program as program_lib
from iql_acme import run_setup
from iql_acme import supervisor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_NAME = 'pen-binary-v0'
NUM_ACTORS = 2
OFFLINE_STEPS = 50
ONLINE_STEPS = 1000  # Seconds of online phase even at ~250 env steps/s.
BATCH_SIZE = 64
EVAL_EPISODES = 1
EVAL_EVERY = 10 * (OFFLINE_STEPS + ONLINE_STEPS)  # Only offline-end and final.
LOG_EVERY_S = 0.1   # The evaluator then asks the replay its size often.
# Every node on a namespace host listens on this one port: only distinct
# hosts can all bind it.
NODE_PORT = 2222
RUN_TIMEOUT_S = 240
POLL_S = 0.5        # How often nodes and their sockets are looked at.
# Launchpad's worker manager kills its own node 10 s after SIGTERM
# (--lp_termination_notice_secs); a clean stop takes much less.
STOP_GRACE_S = 15.0
RATIO_TOLERANCE = 0.10
LOG_TAIL_CHARS = 3000
PROBE_TIMEOUT_S = 30  # The plain-socket reachability probe.
COORDINATOR = 'evaluator'
SELF_ENDING = ('actor', COORDINATOR)  # Name prefixes of nodes that end alone.
# Launchpad's worker manager answers SIGTERM by setting the stop event and
# arming a 1 s SIGALRM countdown to a kill (`_stop_or_kill`); a node whose
# interpreter is still finalizing when the alarm comes (handlers reset to the
# default) ends by that SIGALRM: Launchpad's normal stop, as under local_mp.
STOPPED_BY_LAUNCHPAD = -signal.SIGALRM
RUN_MARKER = 'IQL_TEST_WORKDIR'  # In every node's environment: finds leftovers.
# Who must have connected to whom for the run to finish: actors insert into
# the replay, claim steps from the counter and fetch the policy from the
# learner; the learner samples the replay; the evaluator reads the learner's
# steps, the counter's env steps and the replay's size.
ACTORS = [supervisor.node_name('actor', i, NUM_ACTORS)
          for i in range(NUM_ACTORS)]
REQUIRED_PEERS = {
    **{actor: {'replay', 'counter', 'learner'} for actor in ACTORS},
    'learner': {'replay'},
    COORDINATOR: {'learner', 'counter', 'replay'},
}
# Launchpad's node entry point (what a Vertex AI replica runs, and local_mp).
ENTRY_POINT = os.path.join(os.path.dirname(lp.__file__), 'nodes', 'python',
                           'process_entry.py')


@dataclasses.dataclass
class Node:
  """A started node: its group, index in the group, host, address, process."""
  name: str
  group: str
  index: int
  host: cross_host.Host
  address: str
  process: Optional[subprocess.Popen] = None
  log_path: str = ''
  # (local, remote) endpoints of every connected socket seen during the run.
  connections: Set[Tuple[cross_host.Endpoint, cross_host.Endpoint]] = (
      dataclasses.field(default_factory=set))

  @property
  def port(self) -> int:
    return int(self.address.rsplit(':', 1)[1])

  def log_tail(self) -> str:
    with open(self.log_path, errors='replace') as f:
      return f'--- {self.name} ---\n' + f.read()[-LOG_TAIL_CHARS:]


def make_test_program(workdir: str):
  config = run_setup.make_config(ENV_NAME, offline_steps=OFFLINE_STEPS,
                                 online_steps=ONLINE_STEPS,
                                 batch_size=BATCH_SIZE)
  spec = envs.make_environment(ENV_NAME, 0)
  # Finds the embedded dataset inside the package on the learner's host.
  dataset_fn = multi_machine.make_offline_dataset_fn(
      ENV_NAME, None, spec.observation_spec().shape[0],
      spec.action_spec().shape[0])
  run = program_lib.RunConfig(
      env_name=ENV_NAME, workdir=workdir, num_actors=NUM_ACTORS,
      eval_every=EVAL_EVERY, eval_episodes=EVAL_EPISODES,
      final_eval_episodes=EVAL_EPISODES,
      log_every_s=LOG_EVERY_S, supervised=True)
  return program_lib.make_program(config, dataset_fn, run)


def node_names(program) -> List[Tuple[str, str, int]]:
  """(node name, group, index in group), in `program.groups` order."""
  return [(supervisor.node_name(group, i, len(nodes)), group, i)
          for group, nodes in program.groups.items()
          for i in range(len(nodes))]


def prepare_nodes(program, hosts: cross_host.Hosts,
                  job_dir: str) -> Tuple[List[Node], Dict[str, List[str]]]:
  """Binds each node's address to its host and writes each group's job file.

  Returns the nodes and the cluster spec's `cluster` (group -> addresses).
  """
  nodes, cluster = [], {}
  for name, group, index in node_names(program):
    host = hosts.hosts[name]
    port = NODE_PORT if hosts.isolated else portpicker.pick_unused_port()
    nodes.append(Node(name, group, index, host, f'{host.ip}:{port}'))
    cluster.setdefault(group, []).append(nodes[-1].address)
  # As Launchpad's vertex_ai launch: context, handles, addresses per replica.
  for group, group_nodes in program.groups.items():
    for node in group_nodes:
      node._initialize_context(lp_context.LaunchType.VERTEX_AI,  # pylint: disable=protected-access
                               launch_config=None)
  for group, group_nodes in program.groups.items():
    for node in group_nodes:
      for handle in node.input_handles:
        handle.connect(node, group)
  for group, group_nodes in program.groups.items():
    for index, node in enumerate(group_nodes):
      node.bind_addresses(cluster=group, instance=index)
    serialization.serialize_functions(
        os.path.join(job_dir, f'{group}.pkl'), group,
        [node.function for node in group_nodes])
  return nodes, cluster


def start_node(node: Node, cluster, job_dir: str, output_dir: str,
               marker: str):
  """Starts the node through Launchpad's entry point, on its own host."""
  cluster_spec = {'cluster': cluster,
                  'task': {'type': node.group, 'index': node.index}}
  env = {**os.environ, 'CLUSTER_SPEC': json.dumps(cluster_spec),
         'PYTHONUNBUFFERED': '1', RUN_MARKER: marker}
  command = node.host.command([
      sys.executable, ENTRY_POINT,
      f'--data_file={os.path.join(job_dir, node.group + ".pkl")}'])
  node.log_path = os.path.join(output_dir, f'{node.name}.log')
  with open(node.log_path, 'w') as log:
    node.process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=cross_host.die_with_parent)


def watch(nodes: List[Node]) -> str:
  """Polls until the coordinator ends, a node fails, or the time runs out.

  Records every node's connected sockets on each poll. Returns how it ended.
  """
  deadline = time.time() + RUN_TIMEOUT_S
  while time.time() < deadline:
    for node in nodes:
      if node.process.poll() is None:
        node.connections |= cross_host.remote_endpoints(node.process.pid)
    for node in nodes:
      code = node.process.poll()
      if code is None:
        continue
      if node.name == COORDINATOR:
        return 'finished' if code == 0 else f'{node.name} exited {code}'
      if code != 0 or not node.name.startswith('actor'):
        return f'{node.name} exited {code}'
    time.sleep(POLL_S)
  return f'no end within {RUN_TIMEOUT_S}s'


def stop(nodes: List[Node]) -> List[str]:
  """SIGTERM to the nodes still running; SIGKILL after STOP_GRACE_S.

  Returns the names of the nodes that had to be killed.
  """
  running = [n for n in nodes if n.process and n.process.poll() is None]
  for node in running:
    node.process.send_signal(signal.SIGTERM)
  deadline = time.time() + STOP_GRACE_S
  while time.time() < deadline and any(
      n.process.poll() is None for n in running):
    time.sleep(POLL_S / 5)
  killed = []
  for node in running:
    if node.process.poll() is None:
      node.process.kill()
      node.process.wait()
      killed.append(node.name)
  return killed


def namespace_pids(host: cross_host.Host) -> List[int]:
  if host.namespace is None:
    return []
  out = subprocess.run(['ip', 'netns', 'pids', host.namespace],
                       capture_output=True, text=True, check=False).stdout
  return [int(pid) for pid in out.split()]


@pytest.fixture(scope='module')
def cross_host_run(tmp_path_factory):
  """Runs the program with every node on its own host; then removes them."""
  root = tmp_path_factory.mktemp('cross_host')
  workdir, job_dir, output_dir = (str(root / d) for d in
                                  ('workdir', 'jobs', 'node_output'))
  for directory in (workdir, job_dir, output_dir):
    os.makedirs(directory)
  program = make_test_program(workdir)
  names = [name for name, _, _ in node_names(program)]
  nodes, cluster, killed, ended = [], {}, [], 'not started'
  started = time.time()
  with cross_host.make_hosts(names) as hosts:
    try:
      nodes, cluster = prepare_nodes(program, hosts, job_dir)
      for node in nodes:
        start_node(node, cluster, job_dir, output_dir, marker=workdir)
      ended = watch(nodes)
    finally:
      killed = stop(nodes)
      # Every process the hosts hold is one of ours; none may be left.
      left_in_hosts = {n.name: namespace_pids(n.host) for n in nodes}
    host_ips, isolated = hosts.ips, hosts.isolated
  topology = 'network namespaces' if isolated else 'loopback addresses'
  print(f'cross-host topology: {topology}, {time.time() - started:.0f}s; ' +
        '; '.join(f'{n.name}@{n.address} -> {sorted(outgoing(n))}'
                  for n in nodes))
  summary_path = os.path.join(workdir, program_lib.SUMMARY_FILE)
  summary = (json.load(open(summary_path)) if os.path.exists(summary_path)
             else None)
  return {'nodes': nodes, 'cluster': cluster, 'ended': ended,
          'killed': killed, 'left_in_hosts': left_in_hosts,
          'leftovers': hosts.leftovers(), 'host_ips': host_ips,
          'isolated': isolated, 'summary': summary, 'workdir': workdir,
          'logs': '\n'.join(n.log_tail() for n in nodes if n.log_path)}


def test_run_finished_and_every_node_exited_cleanly(cross_host_run):
  """The coordinator finished; every node ended by itself or on SIGTERM.

  Actors and the evaluator end by themselves: exit code 0. Replay, counter
  and learner serve until the launcher's SIGTERM; they must end within
  STOP_GRACE_S without a traceback, with 0 or STOPPED_BY_LAUNCHPAD.
  """
  run = cross_host_run
  assert run['ended'] == 'finished', run['logs']
  assert run['killed'] == [], run['logs']
  for node in run['nodes']:
    code = node.process.returncode
    if node.name.startswith(SELF_ENDING):
      assert code == 0, (node.name, code, run['logs'])
    else:
      assert code in (0, STOPPED_BY_LAUNCHPAD), (node.name, code, run['logs'])
    with open(node.log_path, errors='replace') as f:
      assert 'Traceback' not in f.read(), node.log_tail()


def test_each_node_has_its_own_host_and_address(cross_host_run):
  """Distinct host per node; its Launchpad address is its host's IP.

  No node was given a loopback or wildcard address; with namespaces every
  node's address has the same port, which only distinct hosts can all bind.
  """
  run = cross_host_run
  nodes = run['nodes']
  assert len(nodes) == 4 + NUM_ACTORS
  assert len({n.host.ip for n in nodes}) == len(nodes)
  assert run['host_ips'] == {n.host.ip for n in nodes}
  for node in nodes:
    ip = node.address.rsplit(':', 1)[0]
    assert ip == node.host.ip, node
    assert ip not in ('0.0.0.0', '127.0.0.1', 'localhost'), node
    assert run['cluster'][node.group][node.index] == node.address
  if run['isolated']:
    assert all(not n.host.ip.startswith('127.') for n in nodes)
    assert {n.port for n in nodes} == {NODE_PORT}
    assert len({n.host.namespace for n in nodes}) == len(nodes)


def test_online_transitions_went_through_the_remote_replay(cross_host_run):
  """The summary's counts: every online step reached the replay's host."""
  summary = cross_host_run['summary']
  assert summary is not None, cross_host_run['logs']
  assert summary['offline_steps'] == OFFLINE_STEPS
  assert summary['actor_steps'] == ONLINE_STEPS
  assert summary['replay_size'] == ONLINE_STEPS
  assert summary['online_updates'] > 0
  assert abs(summary['update_to_env_step_ratio'] - 1.0) <= RATIO_TOLERANCE
  actor_summaries = [
      json.load(open(os.path.join(cross_host_run['workdir'], 'logs',
                                  f'{actor}_summary.json')))
      for actor in ACTORS]
  assert sum(s['env_steps'] for s in actor_summaries) == ONLINE_STEPS
  for actor_summary in actor_summaries:  # Acting began after the offline phase.
    assert actor_summary['learner_steps_at_first_action'] >= OFFLINE_STEPS


def test_nodes_contacted_only_the_test_hosts(cross_host_run):
  """Every socket of every node connects it to a test host's address.

  Outgoing connections (from a port other than the node's own) go exactly
  to addresses of the program's nodes; incoming ones come from test hosts
  (with loopback hosts, from the kernel's loopback source 127.0.0.1). Each
  node reached the nodes it needs (REQUIRED_PEERS): traffic crossed hosts.
  """
  run = cross_host_run
  nodes = run['nodes']
  clients_from = set(run['host_ips'])
  if not run['isolated']:
    clients_from.add(cross_host.LOOPBACK_SOURCE)
  for node in nodes:
    assert node.connections or node.name not in REQUIRED_PEERS, node.name
    incoming = {remote for local, remote in node.connections
                if local[1] == node.port}
    assert {ip for ip, _ in incoming} <= clients_from, (node.name, incoming)
    peers = outgoing_peers(node, nodes)  # Fails on an address of no node.
    assert node.name not in peers, node.name  # Never to its own address.
    assert REQUIRED_PEERS.get(node.name, set()) <= peers, (node.name, peers)


def outgoing(node: Node) -> Set[str]:
  """The 'ip:port' addresses `node` connected to (from a port not its own)."""
  return {f'{ip}:{port}' for local, (ip, port) in node.connections
          if local[1] != node.port}


def outgoing_peers(node: Node, nodes: List[Node]) -> Set[str]:
  """Names of the nodes `node` connected to; asserts each is a node's."""
  node_at = {n.address: n.name for n in nodes}
  strangers = outgoing(node) - set(node_at)
  assert not strangers, f'{node.name} connected to {strangers}'
  return {node_at[address] for address in outgoing(node)}


def test_hosts_and_processes_are_removed(cross_host_run):
  """No process left on any test host; namespaces, veths and bridge gone."""
  run = cross_host_run
  assert run['left_in_hosts'] == {n.name: [] for n in run['nodes']}
  assert all(n.process.poll() is not None for n in run['nodes'])
  assert run_processes(run['workdir']) == []
  assert run['leftovers'] == []


def run_processes(workdir: str) -> List[int]:
  """Processes alive whose environment marks them as this run's."""
  alive = []
  for process in psutil.process_iter():
    try:
      if process.environ().get(RUN_MARKER) == workdir:
        alive.append(process.pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return alive


_SERVE = textwrap.dedent('''
    import socket, sys
    server = socket.create_server(('', int(sys.argv[1])), reuse_port=False)
    print('listening', flush=True)
    while True:
      server.accept()[0].close()
''')
_PROBE = textwrap.dedent('''
    import json, socket, sys
    port, reached = int(sys.argv[1]), {}
    for ip in sys.argv[2:]:
      try:
        socket.create_connection((ip, port), timeout=5).close()
        reached[ip] = True
      except OSError:
        reached[ip] = False
    print(json.dumps(reached))
''')


def test_a_host_reaches_another_only_at_its_address():
  """The premise: on namespace hosts, localhost is never another host.

  A server on host `a` is reached from host `b` at a's address; at
  localhost, `b` reaches only its own loopback (refused). With loopback
  hosts the network stack is shared and localhost reaches `a` too: that
  fallback shows addressing, not isolation.
  """
  with cross_host.make_hosts(['a', 'b']) as hosts:
    a, b = hosts.hosts['a'], hosts.hosts['b']
    port = NODE_PORT if hosts.isolated else portpicker.pick_unused_port()
    server = subprocess.Popen(
        a.command([sys.executable, '-c', _SERVE, str(port)]),
        stdout=subprocess.PIPE, text=True,
        preexec_fn=cross_host.die_with_parent)
    try:
      assert server.stdout.readline().strip() == 'listening'
      probe = subprocess.run(
          b.command([sys.executable, '-c', _PROBE, str(port), a.ip,
                     cross_host.LOOPBACK_SOURCE]),
          capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True)
    finally:
      server.kill()
      server.wait()
    reached = json.loads(probe.stdout)
    isolated = hosts.isolated
  assert reached[a.ip] is True
  assert reached[cross_host.LOOPBACK_SOURCE] is (not isolated)
  assert hosts.leftovers() == []

