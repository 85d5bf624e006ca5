"""Background processes of the local control plane (pid files, tied to this process's life)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from controller.localcluster import processes
from controller.localcluster.cluster import port_free


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


# Its first thread ends (pthread_exit) while another one still holds a listening socket: the state a killed
# Go server (kube-apiserver) passes through while its threads end.
_FIRST_THREAD_ENDS_FIRST = """
import ctypes, socket, sys, threading, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
threading.Thread(target=time.sleep, args=(float(sys.argv[1]),)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_first_thread_ended_is_alive_until_its_last_thread_ends(tmp_path: Path) -> None:
    """Its first thread is a zombie already, but its socket is still bound: taken for dead, the control
    plane's restart found the API server's port busy and moved every port (the new API server then looked
    for etcd where none listened)."""
    pid_file = tmp_path / "server.pid"
    log = tmp_path / "server.log"
    process = processes.start(
        [sys.executable, "-c", _FIRST_THREAD_ENDS_FIRST, "3"], pid_file=pid_file, log_file=log, die_with_parent=True
    )
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    port = int(log.read_text())
    time.sleep(0.3)  # the first thread's pthread_exit
    assert Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert processes.alive(pid_file, "-c") == process.pid
    assert not port_free(port)
    process.wait(timeout=10)
    assert processes.alive(pid_file, "-c") is None
    assert port_free(port)
