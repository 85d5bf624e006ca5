"""Background processes of the local control plane (pid files, tied to this process's life)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from controller.localcluster import processes


def test_a_child_started_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG follows the forking *thread*: a control plane restarted from a worker thread
    (asyncio.to_thread, a thread pool) must not die when that thread ends."""
    pid_file = tmp_path / "sleep.pid"
    thread = threading.Thread(
        target=processes.start,
        args=(["sleep", "30"],),
        kwargs={"pid_file": pid_file, "log_file": tmp_path / "sleep.log", "die_with_parent": True},
    )
    thread.start()
    thread.join()
    try:
        time.sleep(0.5)  # time for a death signal to arrive, if one were coming
        assert processes.alive(pid_file, "sleep") is not None
    finally:
        assert processes.stop(pid_file, "sleep", grace=2)
