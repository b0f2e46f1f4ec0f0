"""Finding a local Ray cluster's processes (psutil): by process group, by the temp dir on
their command lines, and by descent. Ray puts each worker process (`ray::IDLE`, actors,
job drivers) in a process group of its own, so signalling the head's group is not enough
to stop everything it started. Zombies are left out everywhere: a zombie runs nothing, it
waits for its parent's wait()."""

from __future__ import annotations

import os

import psutil


def start_time(pid: int) -> str | None:
    """When the process started, in seconds since boot (with the pid, it names a process:
    pids get reused), or None when there is no such live process.

    Since boot, not since the epoch: psutil's `create_time()` is boot time plus that,
    and the boot time it reads moves with clock adjustments (NTP), so the same process
    could compare unequal across calls. Two decimals: the kernel counts in 1/100 s."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            since_boot = proc.create_time() - psutil.boot_time()
    except psutil.Error:
        return None
    return f"{since_boot:.2f}"


def _live() -> dict[int, int | None]:
    """pid → parent pid of every live process."""
    return {
        proc.pid: proc.info["ppid"]
        for proc in psutil.process_iter(["ppid", "status"])
        if proc.info["status"] != psutil.STATUS_ZOMBIE
    }


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # gone meanwhile
        return None


def cmdline(pid: int) -> str:
    """The command line joined by spaces ('' when the process is gone or unreadable)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def processes_mentioning(text: str) -> list[int]:
    """Live pids (not this one) whose command line contains `text`.

    Ray renames some processes (`ray::DashboardAgent`, `ray::IDLE`), whose command lines
    then no longer name the temp dir: `cluster_pids` also follows the process tree."""
    return [pid for pid in _live() if pid != os.getpid() and text in cmdline(pid)]


def cluster_pids(pgid: int, temp_dir: str) -> list[int]:
    """Live members of process group `pgid`, processes naming `temp_dir`, and all their
    descendants (a process that left the group, e.g. by `setsid`, is still found)."""
    live = _live()
    found = {pid for pid in live if _pgid(pid) == pgid}
    found |= set(processes_mentioning(temp_dir))
    children: dict[int | None, list[int]] = {}
    for pid, ppid in live.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)
