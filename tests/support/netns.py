"""Two hosts on one machine: two network namespaces joined by a veth pair, each with its own
address, loopback and routing table, so that processes in them talk over a real (virtual)
link as two machines would. Needs root and iproute2's ``ip``; a test skips with the reason
otherwise. The namespaces (and with them the veth pair and any process left inside) are
removed whatever happens."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).parent / "torchrun"
SUBNET = "10.231.0"
RENDEZVOUS_PORT = 29400


@dataclass(frozen=True)
class Host:
    netns: str
    ifname: str  # its end of the veth pair: GLOO_SOCKET_IFNAME
    address: str

    def command(self, argv: Sequence[str], **env: str) -> list[str]:
        """``argv`` run inside this host, with ``env`` set."""
        return ["ip", "netns", "exec", self.netns, "env", *(f"{k}={v}" for k, v in env.items()),
                *argv]  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _remove(namespace: str) -> None:
    """Kill what still runs inside (processes this test started), then the namespace."""
    found = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30
    )
    for pid in found.stdout.split():
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


@contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Hosts ``SUBNET.1`` and ``SUBNET.2``, with names unique to this run."""
    if os.geteuid() != 0:
        pytest.skip("two hosts need root (ip netns add); CI runs as root")
    if shutil.which("ip") is None:
        pytest.skip("two hosts need iproute2's ip: scripts/system-packages.sh installs it")
    tag = f"{os.getpid() % 10000:04d}{secrets.token_hex(2)}"
    a = Host(f"nnserve-{tag}-a", f"nn{tag}a", f"{SUBNET}.1")
    b = Host(f"nnserve-{tag}-b", f"nn{tag}b", f"{SUBNET}.2")
    made: list[str] = []
    try:
        try:
            for host in (a, b):
                _ip("netns", "add", host.netns)
                made.append(host.netns)
            _ip("link", "add", a.ifname, "netns", a.netns, "type", "veth",
                "peer", "name", b.ifname, "netns", b.netns)  # fmt: skip
            for host in (a, b):
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.ifname)
                _ip("-n", host.netns, "link", "set", host.ifname, "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.strip()}")
        yield a, b
    finally:
        for namespace in made:
            _remove(namespace)


def torchrun_node(host: Host, rendezvous: Host, run_id: str, argv: Sequence[str],
                  max_restarts: int = 0) -> list[str]:  # fmt: skip
    """One node of a two-node torchrun (one process per node) on ``host``, rendezvous at
    ``rendezvous`` (c10d, its TCP store hosted there). ``--local-addr`` and ``is_host``: the
    machine's host name resolves outside the namespaces, so say who is who."""
    return host.command(
        [
            str(TORCHRUN),
            "--nnodes", "2",
            "--nproc-per-node", "1",
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{rendezvous.address}:{RENDEZVOUS_PORT}",
            "--rdzv-id", run_id,
            "--rdzv-conf", f"is_host={str(host == rendezvous).lower()}",
            "--local-addr", host.address,
            "--max-restarts", str(max_restarts),
            "-m", "training",
            *argv,
        ],
        GLOO_SOCKET_IFNAME=host.ifname,
        # a rendezvous store per round: with torch 2.13's one store shared across rounds, a
        # restarted rank can read the address of the rank 0 that died (connection refused)
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
    )  # fmt: skip
