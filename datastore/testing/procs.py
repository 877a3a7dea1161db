"""Start real server processes on 127.0.0.1: datastore and, as the oracle, real etcd.

Used by e2e tests, differential tests and the side-by-side benchmark. Readiness is a
condition (a Status RPC answers), never a sleep.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from datastore.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from datastore.errors import wants_credentials

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"


@dataclass(frozen=True)
class ClientTLS:
    """How a test client reaches an https:// server (etcdctl's --cacert/--cert/--key).

    ``ca=None`` trusts whatever certificate the server presents (for --auto-tls servers,
    like etcdctl --insecure-skip-tls-verify).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def etcdctl_flags(self) -> list[str]:
        # etcdctl 3.4 only skips verification with TLS explicitly on (--insecure-transport)
        out = [f"--cacert={self.ca}"] if self.ca else [
            "--insecure-transport=false", "--insecure-skip-tls-verify"]
        if self.cert and self.key:
            out += [f"--cert={self.cert}", f"--key={self.key}"]
        return out

    def channel(self, url: str) -> grpc.Channel:
        """A blocking gRPC channel to ``https://HOST:PORT`` with these settings."""
        from datastore.server.tlsutil import TLSInfo, open_channel_sync

        info = TLSInfo(cert_file=str(self.cert or ""), key_file=str(self.key or ""),
                       trusted_ca_file=str(self.ca or ""), self_signed=self.ca is None)
        return open_channel_sync(url, info)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, chosen below the kernel's ephemeral range.

    A port from bind(0) comes from the ephemeral range, which every outgoing connection
    also draws its source port from: on a busy machine a client socket could take it
    before our server binds it. Ports below that range are only ever taken by listeners.
    """
    low, high = 20000, _EPHEMERAL_LOW - 1
    if high - low < 1000:  # an unusual port range: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{high}")


def free_port_block(offsets: Iterable[int]) -> int:
    """A base port P such that P + o is free on 127.0.0.1 right now for every offset o."""
    offsets = sorted(set(offsets))
    for _ in range(200):
        base = free_port()
        if base + offsets[-1] > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for o in offsets:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + o))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports on 127.0.0.1")


@dataclass
class ServerProc:
    """One running server process and where to reach it."""

    kind: str  # "etcd" or "datastore"
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    _fresh: bool = True
    client_scheme: str = "http"  # "https": wait_ready dials with ``tls``
    peer_scheme: str = "http"
    tls: ClientTLS | None = None  # the data dir did not exist before our last launch

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.client_scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.peer_scheme}://127.0.0.1:{self.peer_port}"

    def channel(self) -> grpc.Channel:
        """A blocking channel to the client port: TLS with ``tls`` when the URL is https."""
        if self.client_scheme == "https":
            return (self.tls or ClientTLS()).channel(self.client_url)
        return grpc.insecure_channel(self.endpoint)

    def launch(self) -> ServerProc:
        """Start the process without waiting for it to become ready."""
        self._fresh = not self.data_dir.exists()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, **self.env}
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def start(self, timeout: float = 30.0, attempts: int = 3) -> ServerProc:
        """Launch and wait; if a port we picked was taken meanwhile, retry on fresh ports."""
        for attempt in range(attempts):
            try:
                return self.launch().wait_ready(timeout)
            except RuntimeError:
                if attempt == attempts - 1 or "address already in use" not in self.log_tail():
                    raise
                self._move_ports()
        raise AssertionError("unreachable")

    def _move_ports(self) -> None:
        """Another process took a port between free_port() and our bind: pick new ones."""
        cp, pp = free_port(), free_port()
        old_c, old_p = f":{self.client_port}", f":{self.peer_port}"
        self.argv = [a.replace(old_c, f":{cp}").replace(old_p, f":{pp}") for a in self.argv]
        self.client_port, self.peer_port = cp, pp
        if self._fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # bootstrapped with the old URLs by the failed launch

    def _check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"{self.kind} {self.name} exited with {self.popen.returncode}:\n"
                               f"{self.log_tail()}")

    def wait_ready(self, timeout: float = 30.0) -> ServerProc:
        """Wait (on conditions) until the client port accepts and a Status RPC answers."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: port {self.client_port} not open after "
                                       f"{timeout}s:\n{self.log_tail()}") from None
                time.sleep(0.01)  # poll interval of the condition above
        # A fresh channel per attempt: a channel whose first connection failed backs off ~1 s.
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with self.channel() as ch:
                    rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=0.3)
                    self._check_alive()  # someone else may own the port if we died
                    return self
            except grpc.RpcError as e:
                if auth_refusal(e):  # it answered: with auth on, Status is for users only
                    self._check_alive()
                    return self
                last = e
            except OSError as e:  # reading a self-signed cert
                last = e
            time.sleep(0.02)  # poll interval of the condition above
        raise TimeoutError(f"{self.name} not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """kill -9, then reap."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.resume()
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def _cluster_flags(name: str, client_port: int, peer_port: int, initial_cluster: str | None,
                   state: str, client_scheme: str = "http", peer_scheme: str = "http") -> list[str]:
    client = f"{client_scheme}://127.0.0.1:{client_port}"
    peer = f"{peer_scheme}://127.0.0.1:{peer_port}"
    return [
        "--name", name,
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial_cluster or f"{name}={peer}",
        "--initial-cluster-state", state,
    ]


def auth_refusal(e: grpc.RpcError) -> bool:
    """A refusal for want of credentials (etcd 3.6 and the datastore guard Status so)."""
    return wants_credentials(e.details() or "")  # type: ignore[attr-defined]


def etcd_proc(base: Path, name: str = "etcd0", extra: list[str] | None = None,
              client_port: int | None = None, peer_port: int | None = None,
              initial_cluster: str | None = None, state: str = "new",
              client_scheme: str = "http", peer_scheme: str = "http",
              tls: ClientTLS | None = None, binary: str | Path | None = None) -> ServerProc:
    """A real etcd process (not started yet); https schemes need the TLS flags in extra.

    ``binary``: another etcd than Debian's (e.g. ``refs.binary("etcd")``, the built 3.6).
    """
    cp, pp = client_port or free_port(), peer_port or free_port()
    data = base / f"{name}.etcd"
    flags = _cluster_flags(name, cp, pp, initial_cluster, state, client_scheme, peer_scheme)
    argv = [str(binary or ETCD_BIN), "--data-dir", str(data), *flags,
            "--log-level", "error", "--logger", "zap", *(extra or [])]
    return ServerProc("etcd", name, data, cp, pp, argv, base / f"{name}.log",
                      client_scheme=client_scheme, peer_scheme=peer_scheme, tls=tls)


def datastore_proc(base: Path, name: str = "ds0", extra: list[str] | None = None,
                   client_port: int | None = None, peer_port: int | None = None,
                   initial_cluster: str | None = None, state: str = "new",
                   client_scheme: str = "http", peer_scheme: str = "http",
                   tls: ClientTLS | None = None) -> ServerProc:
    """A datastore process (not started yet), run from this interpreter."""
    cp, pp = client_port or free_port(), peer_port or free_port()
    data = base / f"{name}.datastore"
    argv = [sys.executable, "-m", "datastore", "serve", "--data-dir", str(data),
            *_cluster_flags(name, cp, pp, initial_cluster, state, client_scheme, peer_scheme),
            *(extra or [])]
    return ServerProc("datastore", name, data, cp, pp, argv, base / f"{name}.log",
                      client_scheme=client_scheme, peer_scheme=peer_scheme, tls=tls)


def etcdctl(endpoint: str, *args: str, timeout: float = 30.0, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real etcdctl (API v3) against one endpoint."""
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run([ETCDCTL_BIN, f"--endpoints={endpoint}", *args], env=env, input=stdin,
                          capture_output=True, timeout=timeout, check=check)
