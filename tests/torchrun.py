"""Run a command under ``torchrun --nproc_per_node 2`` for the data-parallel tests.

``--standalone`` lets torchrun pick a free port (a fixed ``--master_port`` collides with anything
else on the machine that holds it). If the run does not end within ``timeout`` seconds, every
process of it is sent SIGABRT first: with ``PYTHONFAULTHANDLER`` set each one prints where it is
stuck, and the test fails with those stacks instead of a bare timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def run_torchrun(arguments: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``arguments``: a script path and its arguments, or ``["-m", module, ...]``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout:.0f} s; where its processes were:\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
