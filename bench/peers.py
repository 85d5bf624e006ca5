"""`make bench-peers`: the same N x M chain on this operator and on Temporal, in one run, on this machine.

Temporal: the Temporal CLI's dev server (built from the Go module proxy by tools/build-go-tools.sh temporal,
SQLite in a temporary file) and the `temporalio` Python SDK (a worker in this process), N workflows of M
no-op activities in a chain. This operator: N Workflows of M steps in a chain, once with a side effect per
step (`io.fs.write_file`, a durable checkpoint before each) and once without (`sys.sleep 0`), on a private
local control plane (bench/__main__.py). Throughput is measured the same way on both sides: steps divided
by the time from the first step's start to the last step's end. Prints the figures and their ratios;
asserts nothing. Never run by `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.__main__ import LABELS, peak_rss_mib, run
from bench.procs import cpu_seconds_of
from controller.localcluster.devenv import DevEnvironment


@dataclass(frozen=True)
class PeerResult:
    steps: int
    run_seconds: float
    cpu_ms_per_step: dict[str, float]
    sequential_ms_per_step: float

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.run_seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    return cpu_seconds_of(pid)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TemporalDevServer:
    """`temporal server start-dev` on free loopback ports, its database in a temporary directory."""

    def __init__(self, binary: Path, state: Path) -> None:
        self.binary = binary
        self.state = state
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> float:
        started = time.monotonic()
        argv = [
            str(self.binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(self.port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--db-filename", str(self.state / "temporal.db"), "--log-level", "error",
        ]  # fmt: skip
        log = (self.state / "temporal.log").open("wb")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = started + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"temporal exited with {self.process.returncode}: see {self.state / 'temporal.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return time.monotonic() - started
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("temporal dev server did not listen within 120 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


async def temporal_chains(server: TemporalDevServer, count: int, steps: int, sequential: int) -> PeerResult:
    from temporalio.client import Client
    from temporalio.worker import Worker

    from bench.temporal_chain import Chain, noop

    client = await Client.connect(server.address)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[Chain], activities=[noop]):
        one_at_a_time = []
        for i in range(sequential):
            begun = time.monotonic()
            await client.execute_workflow(Chain.run, steps, id=f"{queue}-seq-{i}", task_queue=queue)
            one_at_a_time.append((time.monotonic() - begun) * 1000 / steps)
        assert server.process is not None
        cpu_before = {"temporal": process_cpu_seconds(server.process.pid), "worker (this process)": own_cpu_seconds()}
        handles = await asyncio.gather(
            *(client.start_workflow(Chain.run, steps, id=f"{queue}-{i}", task_queue=queue) for i in range(count))
        )
        await asyncio.gather(*(handle.result() for handle in handles))
        cpu_after = {"temporal": process_cpu_seconds(server.process.pid), "worker (this process)": own_cpu_seconds()}
        descriptions = await asyncio.gather(*(handle.describe() for handle in handles))
    first_start = min(d.start_time for d in descriptions)
    last_close = max(d.close_time for d in descriptions if d.close_time is not None)
    total = count * steps
    return PeerResult(
        steps=total,
        run_seconds=(last_close - first_start).total_seconds(),
        cpu_ms_per_step={k: round((cpu_after[k] - cpu_before[k]) * 1000 / total, 2) for k in cpu_after},
        sequential_ms_per_step=sorted(one_at_a_time)[len(one_at_a_time) // 2],
    )


def ours(count: int, steps: int, sequential: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="airun-bench-peers-") as tmp:
        env = DevEnvironment(Path(tmp), die_with_parent=True)
        try:
            env.up()
            for kind in ("effects", "pure"):
                seq = [run(env, 1, steps, f"peer-seq-{kind}-{i}", kind) for i in range(sequential)]
                result = run(env, count, steps, f"peer-{kind}", kind)
                overheads = sorted(r["step_overhead_ms_p50"] for r in seq if r["step_overhead_ms_p50"] is not None)
                result["sequential_overhead_ms_p50"] = overheads[len(overheads) // 2] if overheads else None
                results[kind] = result
            results["effects"]["operator_peak_rss_mib"] = peak_rss_mib(env)
        finally:
            env.down()
    return results


def temporal_binary() -> Path:
    out = subprocess.run(
        ["bash", str(Path(__file__).resolve().parent.parent / "tools" / "build-go-tools.sh"), "temporal"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out) / "temporal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100, help="concurrent workflows (default 100)")
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow, a chain (default 10)")
    parser.add_argument("--sequential", type=int, default=5, help="workflows run one at a time for latency")
    args = parser.parse_args()
    print(f"{datetime.now():%Y-%m-%d %H:%M}  {args.workflows} workflows x {args.steps} steps, {os.cpu_count()} CPUs")

    binary = temporal_binary()
    with tempfile.TemporaryDirectory(prefix="airun-bench-temporal-") as tmp:
        server = TemporalDevServer(binary, Path(tmp))
        try:
            print(f"\n== Temporal dev server ({binary.parent.name}), temporalio SDK: no-op activities")
            print(f"  server listening in {server.start():.1f} s")
            peer = asyncio.run(temporal_chains(server, args.workflows, args.steps, args.sequential))
        finally:
            server.stop()
    print(f"  steps/s: {peer.steps_per_second:.1f}  ({peer.steps} steps in {peer.run_seconds:.2f} s)")
    print(f"  per step, one workflow at a time (p50): {peer.sequential_ms_per_step:.1f} ms")
    print(f"  CPU ms per step: {peer.cpu_ms_per_step}")

    mine = ours(args.workflows, args.steps, args.sequential)
    for kind, result in mine.items():
        print(f"\n== this operator, {LABELS[kind]}")
        print(f"  steps/s: {result['steps_per_second']}  ({result['steps']} steps in {result['run_seconds']} s)")
        print(f"  per-step overhead, one workflow at a time (p50): {result['sequential_overhead_ms_p50']} ms")
        print(f"  CPU ms per step: {result['cpu_ms_per_step']}")
        print(f"  API writes per step: {result['operator_writes_per_step']}")
    print(f"  operator peak RSS: {mine['effects']['operator_peak_rss_mib']} MiB")

    print("\n== ratio (this operator / Temporal, steps/s)")
    for kind, result in mine.items():
        print(f"  {LABELS[kind]}: {result['steps_per_second'] / peer.steps_per_second:.2f}")


if __name__ == "__main__":
    main()
