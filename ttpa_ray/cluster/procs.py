"""Finding a local Ray cluster's processes in /proc (Linux): by process group, by the
temp dir on their command lines, and by descent. Ray puts each worker process
(`ray::IDLE`, actors, job drivers) in a process group of its own, so signalling the
head's group is not enough to stop everything it started."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """Start time in clock ticks (with the pid, it names a process: pids get reused)."""
    fields = _stat(pid)
    return fields[19] if fields and fields[0] != "Z" else None


def _live_pids() -> dict[int, list[str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            # A zombie runs nothing; it waits for its parent's wait().
            if fields is not None and fields[0] != "Z":
                out[int(entry)] = fields
    return out


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def processes_mentioning(text: str) -> list[int]:
    """Live pids (not this one) whose command line contains `text`.

    Ray renames some processes (`ray::DashboardAgent`, `ray::IDLE`), whose command lines
    then no longer name the temp dir: `cluster_pids` also follows the process tree."""
    return [pid for pid in _live_pids() if pid != os.getpid() and text in cmdline(pid)]


def cluster_pids(pgid: int, temp_dir: str) -> list[int]:
    """Live members of process group `pgid`, processes naming `temp_dir`, and all their
    descendants (a process that left the group, e.g. by `setsid`, is still found)."""
    live = _live_pids()
    found = {pid for pid, f in live.items() if int(f[2]) == pgid}
    found |= set(processes_mentioning(temp_dir))
    children: dict[int, list[int]] = {}
    for pid, f in live.items():
        children.setdefault(int(f[1]), []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)
