"""`cdi-live up` as a terminal runs it: Ctrl-C (SIGINT to the whole foreground process group) stops every
service it started, each cleanly, with no traceback."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis

from services.cli.up import wait_until_ready
from shared.state import scheduling
from tests.conftest import REDIS_URL, free_port


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies still count for killpg until reaped; only our direct child can be one here, and we reaped it
    return True


def group_commands(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the services in a process group (the group's leader, `cdi-live up`, left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            if os.getpgid(int(entry)) == pgid:
                command = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                if "services.cli.main" in command:
                    found.append((int(entry), command))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return found


def test_ctrl_c_on_up_reaches_every_child_and_ends_without_traceback(tmp_path):
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    port, zport = free_port(), free_port()
    env = {**os.environ, "KEY_PREFIX": f"up{uuid.uuid4().hex[:8]}", "DATA_DIR": str(tmp_path / "live")}
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--port", str(port),
                                    "--bind", f"tcp://127.0.0.1:{zport}", "--redis-url", REDIS_URL], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", [process], timeout=240)
            time.sleep(1.0)  # the ingest's assembler process is up too
            niceness = {command: os.getpriority(os.PRIO_PROCESS, pid) for pid, command in group_commands(process.pid)}
            assert niceness, "no service found in the group"
            for command, nice in niceness.items():  # the scan being taken now gets the cores first
                assert nice == (scheduling.REFINE_NICENESS if "worker refine" in command else 0), (command, nice)
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
            assert process.wait(60) == 0
            deadline = time.time() + 30
            while group_alive(process.pid) and time.time() < deadline:
                time.sleep(0.2)
            assert not group_alive(process.pid), "a service outlived Ctrl-C"
        finally:
            if process.poll() is None or group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
