"""Two computers on one lab network, for real: network namespaces joined by a veth pair.

Each namespace has its own interfaces, addresses, ports and multicast
group memberships, so servers and clients started in them (``ip netns exec
NAME ...``) talk over the veth pair exactly as two lab PCs talk over a
switch, and nothing reaches the machine's real network.  Making them needs
root and iproute2; ``LabNetwork.unavailable()`` says why not, if not.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys

COMMAND_TIMEOUT = 60.0


class LabNetwork:
    """Namespaces A and B, with addresses 10.X.Y.1 and 10.X.Y.2 on their veth ends."""

    def __init__(self) -> None:
        # Unique per run, and short: an interface name has at most 15 characters.
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.hosts = [f"msA{tag}", f"msB{tag}"]
        self._links = [f"va{tag}", f"vb{tag}"]
        subnet = f"10.{random.randint(200, 254)}.{random.randint(0, 255)}"
        self.addresses = {self.hosts[0]: f"{subnet}.1", self.hosts[1]: f"{subnet}.2"}
        self._made: list[str] = []

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here, or None."""
        if not sys.platform.startswith("linux"):
            return "network namespaces are Linux's"
        if os.geteuid() != 0:
            return "making network namespaces needs root"
        if shutil.which("ip") is None:
            return "needs iproute2's ip command"
        return None

    def create(self) -> LabNetwork:
        """Make both namespaces and the link; RuntimeError (and nothing left) if that fails."""
        a, b = self.hosts
        va, vb = self._links
        try:
            for host in self.hosts:
                self._ip("netns", "add", host)
                self._made.append(host)
            self._ip("link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
            for host, link in zip(self.hosts, self._links, strict=True):
                self._ip("-n", host, "addr", "add", f"{self.addresses[host]}/24", "dev", link)
                self._ip("-n", host, "link", "set", link, "up")
                self._ip("-n", host, "link", "set", "lo", "up")
        except RuntimeError:
            self.close()
            raise
        return self

    def _ip(self, *args: str) -> None:
        result = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def command(self, host: str, *argv: str) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", host, *argv]

    def run(self, host: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(host, *argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )

    def python(self, host: str, code: str) -> subprocess.CompletedProcess:
        """Run Python ``code`` in ``host``'s namespace with this interpreter."""
        return self.run(host, sys.executable, "-c", code)

    def close(self) -> None:
        """Remove the namespaces (the veth pair goes with them).

        Stop the processes inside first: a namespace lives on, unnamed, while
        a process is in it.
        """
        while self._made:
            host = self._made.pop()
            subprocess.run(
                ["ip", "netns", "del", host], capture_output=True, timeout=COMMAND_TIMEOUT
            )
