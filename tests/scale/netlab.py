"""Several runner hosts on one machine: network namespaces joined to the database by veth pairs and a bridge.

The database listens on the bridge's address in this (the root) namespace; each runner host is a
namespace with one veth end (its eth0) whose other end sits on the bridge. A host's link is cut in one
of two ways: "loss" puts a `blackhole` qdisc on both ends, so every packet either way is silently
dropped while the link stays up, as `tc netem loss 100%` would (the sch_netem module is missing on
this kind of machine); "down" sets the bridge-side end down, as a pulled cable: the host loses its
carrier, and once its ARP entry for the database lapses its sends fail with "no route to host".
Addresses are from 198.18.0.0/15, the range RFC 2544 reserves for benchmarking networks: they never
leave the machine.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise with its stderr when it fails and `check`."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def tc(*args: str) -> None:
    """Run `tc ARGS` (traffic control, iproute2); raise with its stderr when it fails."""
    done = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (no root, no CAP_NET_ADMIN, no `ip`), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (and CAP_NET_ADMIN); this user is not root"
    probe = f"pjprobe{secrets.token_hex(3)}"
    try:
        made = ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if made.returncode != 0:
        return f"cannot create a network namespace (CAP_NET_ADMIN missing?): {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class NetLab:
    """A bridge carrying the database's address, and runner hosts added to it; `close` removes all of it."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.subnet = self._free_subnet()
        self.bridge = f"pjb{self.tag}"
        self.hosts: list[str] = []
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    @staticmethod
    def _free_subnet() -> int:
        """A third octet no interface on this machine uses yet (other suites may run beside this one)."""
        used = ip("-4", "-o", "addr", "show").stdout
        for _ in range(100):
            octet = random.randint(1, 254)
            if f"198.18.{octet}." not in used:
                return octet
        raise RuntimeError("no free 198.18.x.0/24 subnet")

    @property
    def address(self) -> str:
        """The database host's address on the virtual network."""
        return f"198.18.{self.subnet}.1"

    def add_host(self) -> str:
        """A new runner host (namespace) linked to the bridge; returns its name for `ip netns exec`."""
        index = len(self.hosts) + 1
        name = f"pj{self.tag}h{index}"
        ip("netns", "add", name)
        self.hosts.append(name)
        ip("link", "add", self._link(name), "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("link", "set", self._link(name), "master", self.bridge)
        ip("link", "set", self._link(name), "up")
        ip("-n", name, "addr", "add", f"198.18.{self.subnet}.{10 + index}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def _link(self, host: str) -> str:
        return f"pj{self.tag}v{host.rsplit('h', 1)[1]}"

    def cut(self, host: str, how: str = "loss") -> None:
        """Every packet to and from `host` is lost from now on ("loss") or its link goes down ("down")."""
        if how == "down":
            ip("link", "set", self._link(host), "down")
        else:
            tc("qdisc", "add", "dev", self._link(host), "root", "blackhole")
            ip("netns", "exec", host, "tc", "qdisc", "add", "dev", "eth0", "root", "blackhole")

    def restore(self, host: str, how: str = "loss") -> None:
        if how == "down":
            ip("link", "set", self._link(host), "up")
        else:
            tc("qdisc", "del", "dev", self._link(host), "root")
            ip("netns", "exec", host, "tc", "qdisc", "del", "dev", "eth0", "root")

    def leftovers(self) -> list[str]:
        """Namespaces and links of this lab still present (empty after `close`)."""
        namespaces = ip("netns", "list").stdout
        links = ip("-o", "link", "show").stdout
        found = [host for host in self.hosts if host in namespaces]
        found += [line.split(":")[1].strip() for line in links.splitlines() if f"pj{self.tag}" in line
                  or f"pjb{self.tag}" in line]
        return found

    def close(self) -> None:
        """Remove every veth pair, namespace and the bridge, whatever state they are in.

        The pairs go first and by name: a namespace's deletion removes its end only once the kernel
        has finished tearing the namespace down, a moment later."""
        for host in self.hosts:
            ip("link", "del", self._link(host), check=False)
            ip("netns", "del", host, check=False)
        ip("link", "del", self.bridge, check=False)
