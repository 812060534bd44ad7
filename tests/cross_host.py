"""Separate hosts on this machine, and the sockets a process has open.

`make_hosts(names)` gives each name a host of its own: a network namespace
with one address on a private subnet, its veth joined to a bridge that only
these namespaces share (no address on the bridge, no route out: a host
reaches the others' addresses and nothing else; its own loopback reaches only
itself). Where namespaces cannot be made (not root), the hosts are distinct
loopback addresses 127.0.0.N instead; `Hosts.isolated` says which.
Everything made is removed by `Hosts.remove()`, also after a partial set-up.

`remote_endpoints(pid)` reads the TCP/UDP sockets a process holds (its file
descriptors matched against /proc/PID/net/*, which shows the process's own
network namespace).
"""

import contextlib
import ctypes
import dataclasses
import ipaddress
import itertools
import os
import signal
import subprocess
from typing import Dict, List, Optional, Sequence, Set, Tuple

# Private subnet of the namespace hosts; .1 upwards, one address per host.
SUBNET = ipaddress.ip_network('10.231.0.0/24')
LOOPBACK_SUBNET = ipaddress.ip_network('127.0.0.0/8')
FIRST_LOOPBACK_HOST = 2          # 127.0.0.1 is `localhost` itself: not used.
# Source address of connections to any 127.0.0.N (the kernel's local route).
LOOPBACK_SOURCE = '127.0.0.1'
# Set to TOPOLOGY_LOOPBACK to run on loopback hosts where namespaces work.
TOPOLOGY_ENV = 'IQL_TEST_HOSTS'
TOPOLOGY_LOOPBACK = 'loopback'
NAMESPACE_INTERFACE = 'eth0'     # The veth end inside each namespace.
IP_TIMEOUT_S = 10
_HOST_SETS = itertools.count()   # Host sets this process made.
_PR_SET_PDEATHSIG = 1            # prctl(2): signal the child at parent death.

# /proc/net/tcp `st` values (include/net/tcp_states.h).
TCP_LISTEN = 0x0A
TCP_CLOSE = 0x07
Endpoint = Tuple[str, int]       # (ip, port)


@dataclasses.dataclass(frozen=True)
class Host:
  """One host: its address and, when isolated, its network namespace."""
  name: str
  ip: str
  namespace: Optional[str] = None

  def command(self, argv: Sequence[str]) -> List[str]:
    """`argv` run on this host (`ip netns exec` execs it: same pid)."""
    if self.namespace is None:
      return list(argv)
    return ['ip', 'netns', 'exec', self.namespace, *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
  return subprocess.run(['ip', *args], capture_output=True, text=True,
                        timeout=IP_TIMEOUT_S, check=check)


class Hosts:
  """The hosts of one test; `remove()` undoes everything that was made."""

  def __init__(self, tag: str):
    self.tag = tag  # Unique per set of hosts: parallel runs do not clash.
    self.bridge = f'iqb{tag}'
    self.hosts: Dict[str, Host] = {}
    self.isolated = False
    self._namespaces: List[str] = []
    self._links: List[str] = []

  @property
  def ips(self) -> Set[str]:
    return {host.ip for host in self.hosts.values()}

  def _add_namespace_hosts(self, names: Sequence[str]):
    _ip('link', 'add', self.bridge, 'type', 'bridge')
    self._links.append(self.bridge)
    _ip('link', 'set', self.bridge, 'up')
    addresses = SUBNET.hosts()
    for index, name in enumerate(names):
      namespace = f'iqlx{self.tag}-{name}'
      veth = f'iqv{self.tag}n{index}'  # Interface names: at most 15 chars.
      ip = str(next(addresses))
      _ip('netns', 'add', namespace)
      self._namespaces.append(namespace)
      _ip('link', 'add', veth, 'type', 'veth', 'peer', 'name',
          NAMESPACE_INTERFACE, 'netns', namespace)
      self._links.append(veth)
      _ip('link', 'set', veth, 'master', self.bridge)
      _ip('link', 'set', veth, 'up')
      _ip('-n', namespace, 'addr', 'add', f'{ip}/{SUBNET.prefixlen}', 'dev',
          NAMESPACE_INTERFACE)
      _ip('-n', namespace, 'link', 'set', NAMESPACE_INTERFACE, 'up')
      _ip('-n', namespace, 'link', 'set', 'lo', 'up')
      self.hosts[name] = Host(name, ip, namespace)
    self.isolated = True

  def _add_loopback_hosts(self, names: Sequence[str]):
    self.hosts = {
        name: Host(name, str(LOOPBACK_SUBNET[FIRST_LOOPBACK_HOST + index]))
        for index, name in enumerate(names)}
    self.isolated = False

  def add(self, names: Sequence[str]):
    """One host per name: namespaces if they can be made, else loopback."""
    try:
      if os.environ.get(TOPOLOGY_ENV) == TOPOLOGY_LOOPBACK:
        raise PermissionError(f'{TOPOLOGY_ENV}={TOPOLOGY_LOOPBACK}')
      self._add_namespace_hosts(names)
    except (OSError, subprocess.SubprocessError):
      self.remove()
      self._add_loopback_hosts(names)

  def leftovers(self) -> List[str]:
    """Namespaces and links of this test that still exist."""
    namespaces = _ip('netns', 'list', check=False).stdout
    links = _ip('-o', 'link', 'show', check=False).stdout
    left = [n for n in self._namespaces
            if any(line.split()[:1] == [n] for line in namespaces.splitlines())]
    left += [l for l in self._links if f': {l}:' in links or f': {l}@' in links]
    return left

  def remove(self):
    """Deletes the namespaces (their veths go with them) and the bridge."""
    for namespace in self._namespaces:
      _ip('netns', 'del', namespace, check=False)
    for link in reversed(self._links):
      if link in self.leftovers():
        _ip('link', 'del', link, check=False)
    self.hosts = {}


@contextlib.contextmanager
def make_hosts(names: Sequence[str]):
  """Yields `Hosts` with one host per name; removes them afterwards."""
  # Unique on this machine: this process's pid and its count of host sets,
  # in hex, so that interface names stay within IFNAMSIZ.
  hosts = Hosts(tag=f'{os.getpid():x}x{next(_HOST_SETS):x}')
  try:
    hosts.add(names)
    yield hosts
  finally:
    hosts.remove()


def die_with_parent():
  """For `preexec_fn`: the child is killed if the test process dies."""
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# --- Sockets of a process -----------------------------------------------------

def _socket_inodes(pid: int) -> Set[str]:
  inodes = set()
  fd_dir = f'/proc/{pid}/fd'
  for fd in os.listdir(fd_dir):
    with contextlib.suppress(OSError):
      target = os.readlink(os.path.join(fd_dir, fd))
      if target.startswith('socket:['):
        inodes.add(target[len('socket:['):-1])
  return inodes


def _decode(hex_endpoint: str) -> Endpoint:
  """An address of /proc/net/{tcp,udp}{,6}: little-endian 32-bit words."""
  hex_ip, hex_port = hex_endpoint.split(':')
  raw = bytes.fromhex(hex_ip)
  raw = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
  ip = ipaddress.ip_address(raw)
  if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:a.b.c.d, a dual-stack socket.
    ip = ip.ipv4_mapped
  return str(ip), int(hex_port, 16)


def sockets(pid: int) -> List[Tuple[str, Endpoint, Endpoint, int]]:
  """(protocol, local, remote, state) of each TCP/UDP socket `pid` holds."""
  try:
    inodes = _socket_inodes(pid)
  except OSError:  # Gone.
    return []
  found = []
  for protocol in ('tcp', 'tcp6', 'udp', 'udp6'):
    try:
      with open(f'/proc/{pid}/net/{protocol}') as f:
        lines = f.read().splitlines()[1:]
    except OSError:
      continue
    for line in lines:
      fields = line.split()
      if fields[9] in inodes:
        found.append((protocol, _decode(fields[1]), _decode(fields[2]),
                      int(fields[3], 16)))
  return found


def remote_endpoints(pid: int) -> Set[Tuple[Endpoint, Endpoint]]:
  """(local, remote) of each connected socket of `pid` (listeners left out)."""
  connected = set()
  for protocol, local, remote, state in sockets(pid):
    if protocol.startswith('tcp') and state in (TCP_LISTEN, TCP_CLOSE):
      continue
    if remote[1] == 0:  # Unconnected (e.g. a UDP socket): no peer.
      continue
    connected.add((local, remote))
  return connected

