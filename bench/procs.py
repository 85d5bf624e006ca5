"""What the benchmarks read of a process from /proc: its CPU time and its peak resident memory."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds_of(pid: int | None) -> float:
    """CPU time used so far by process PID (user + system); 0 for no process."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib_of(pid: int | None) -> float | None:
    """Peak resident memory of process PID (VmHWM), in MiB."""
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None
