"""A compare worker does not outlive its parent process."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from tensorpeft.experiments._compare import _exit_with_parent

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(1, initializer=_exit_with_parent, initargs=(os.getpid(),))
        worker = pool.apply(os.getpid)
        print(worker, flush=True)
        pool.apply_async(time.sleep, (300,))
        time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited all the same
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="polls /proc for the worker's state")
def test_worker_exits_when_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            worker = int(parent.stdout.readline())
            assert _alive(worker)
            parent.send_signal(signal.SIGKILL)
            parent.wait(timeout=30)
            deadline = time.monotonic() + 30
            while _alive(worker) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _alive(worker), f"worker {worker} still running 30 s after its parent was killed"
        finally:
            parent.kill()
