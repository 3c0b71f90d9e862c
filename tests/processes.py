"""Helpers for tests that start real services in their own processes: free loopback ports,
and the processes that belong to one service (found by a unique folder in their command line).
"""
from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """`count` different loopback ports that are free right now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (Linux /proc): give each service a unique folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
