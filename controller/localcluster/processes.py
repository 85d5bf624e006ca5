"""Background processes tracked by pid files: started detached, stopped by pid, never left behind."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, so a killed test run
    # leaves no etcd or kube-apiserver behind.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: children that must
# die with this process are forked from one thread that lives as long as it does, whoever asks for them.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="airun-spawner")


def alive(pid_file: Path, expect: str) -> int | None:
    """The pid in PID_FILE if that process runs and one of its arguments is EXPECT or a path to a
    program named EXPECT (pids are reused, so a pid alone proves nothing)."""
    try:
        pid = int(pid_file.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # A zombie (state Z) has exited already, unless it is the first thread of a process whose other threads
    # are still ending: their files (a server's listening socket) are closed only when the last one has.
    if stat.rsplit(")", 1)[1].split()[0] == "Z" and not _threads_remain(pid):
        return None
    # An empty command line is seen, briefly, while a process starts up: it is still the one we started.
    if any(argv) and not any(arg == expect or Path(arg).name == expect for arg in argv):
        return None
    return pid


def _threads_remain(pid: int) -> bool:
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def start(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # ^C in the terminal that ran `make up` does not reach it
                preexec_fn=_die_with_parent if die_with_parent else None,
            )

        process = _SPAWNER.submit(spawn).result() if die_with_parent else spawn()
    pid_file.write_text(f"{process.pid}\n")
    return process


def stop(pid_file: Path, expect: str, *, grace: float = 10.0) -> bool:
    """Stops the process of PID_FILE (SIGTERM, then SIGKILL after GRACE seconds). True if one ran."""
    pid = alive(pid_file, expect)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if alive(pid_file, expect) is None:
            break
        _reap(pid)
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        while alive(pid_file, expect) is not None:
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)
    pid_file.unlink(missing_ok=True)
    return True


def kill(pid_file: Path, expect: str, *, timeout: float = 10.0) -> bool:
    """SIGKILLs the process of PID_FILE (a crash, for tests and the fault benchmark) and waits up to TIMEOUT
    seconds until it is gone. True if one ran."""
    pid = alive(pid_file, expect)
    if pid is None:
        return False
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while alive(pid_file, expect) is not None and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collects the exit status when PID is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
