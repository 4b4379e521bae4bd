"""Start the whole service on this machine: ingest, one inference and one refinement worker, gateway.

If nothing answers at REDIS_URL, a private redis-server is started (embedded
fallback), so a new user needs nothing else. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import redis

from services.cli.options import add_pva_arguments, check_receivers, positive_int, pva_command_line, pva_config
from services.cli.services_common import add_exposure_arguments, add_settings_arguments, refuse_open_exposure, \
    settings_from
from shared.physics.errors import InputError


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--port", type=int, default=None, help="gateway port (default 8000)")
    add_exposure_arguments(p)
    p.add_argument("--bind", help="ingest ZeroMQ address (default tcp://127.0.0.1:5555)")
    p.add_argument("--receivers", type=positive_int, default=None, metavar="N",
                   help="ingest receivers sharing the stream (default $INGEST_RECEIVERS or 1); receiver K binds "
                        "--bind's port + K, and a sender connects its PUSH socket to all N")
    add_pva_arguments(p)


def ensure_redis(url: str):
    """Return a started redis-server process if one had to be started, else None."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return None
    except redis.ConnectionError:
        pass
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1") or not shutil.which("redis-server"):
        raise InputError(f"no Redis answers at {url}, and none can be started here (install redis-server)")
    process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(parsed.port or 6379),
                                "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(50):
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            print(f"started an embedded Redis at {url}")
            return process
        except redis.ConnectionError:
            time.sleep(0.1)
    process.terminate()
    raise InputError(f"could not start redis-server for {url}")


def start_services(settings, extra_env=None, log=None, ingest_args=(), gateway_args=()) -> list[subprocess.Popen]:
    """The services as children in our process group (a terminal's Ctrl-C reaches each; each stops
    cleanly on it): one ingest per receiver (INGEST_RECEIVERS), the workers, the gateway. ``log``: an
    open file for their output (default: ours)."""
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATA_DIR": str(settings.data_dir),
           "INGEST_BIND": settings.ingest_bind, "GATEWAY_PORT": str(settings.gateway_port),
           "GATEWAY_HOST": settings.gateway_host, **(extra_env or {})}
    exe = [sys.executable, "-m", "services.cli.main"]
    n = settings.ingest_receivers
    ingests = [["ingest", *ingest_args, *(["--receivers", str(n), "--receiver", str(k)] if n > 1 else [])]
               for k in range(n)]
    commands = [*ingests, ["worker", "infer"], ["worker", "refine"], ["gateway", *gateway_args]]
    return [subprocess.Popen(exe + c, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
            for c in commands]


def stop_all(processes, timeout: float = 10.0, interrupted: bool = False) -> None:
    """SIGINT each service still running, then wait (kill after ``timeout``). After a terminal's Ctrl-C
    (``interrupted``) each already has its SIGINT: a second one would make uvicorn abort its shutdown,
    so they are first given a few seconds to stop on the first."""
    if interrupted:
        deadline = time.time() + 5
        while any(p.poll() is None for p in processes) and time.time() < deadline:
            time.sleep(0.1)
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + timeout
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def services_running(settings, log=None, ingest_args=(), gateway_args=()):
    """Redis (embedded if none answers) and the four services, all stopped cleanly on leaving —
    on Ctrl-C too. Yields (processes, stopping): ``stopping`` fills on SIGTERM."""
    embedded = ensure_redis(settings.redis_url)
    processes = start_services(settings, log=log, ingest_args=ingest_args, gateway_args=gateway_args)
    stopping: list = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    interrupted = False
    try:
        yield processes, stopping
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop_all(processes, interrupted=interrupted)
        if embedded:
            embedded.terminate()


def wait_until_answering(base: str, process, timeout: float = 60.0) -> None:
    """A gateway on its own (no workers): until its /health answers; InputError if it stops or takes too long."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise InputError(f"the gateway stopped while starting (exit code {process.returncode})")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise InputError(f"the gateway at {base} did not answer within {timeout:g} s")


def wait_until_ready(base: str, processes, timeout: float = 300.0, progress=None, where: str = "the log lines above"):
    """The workers load TensorFlow and build their graphs first; /ready says when they are done.
    ``progress`` (e.g. print) is told each step as it happens."""
    deadline, said = time.time() + timeout, set()

    def tell(step: str) -> None:
        if progress and step not in said:
            said.add(step)
            progress(f"  {step}")

    while time.time() < deadline:
        if any(p.poll() is not None for p in processes):
            raise InputError(f"a service stopped while starting; see {where}")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2):
                tell("inference and refinement workers ready")
                return  # 200: Redis and both workers answer
        except urllib.error.HTTPError as exc:  # 503 while the workers load
            tell("gateway answering")
            try:
                workers = json.loads(exc.read()).get("workers", {})
            except ValueError:
                workers = {}
            for kind, alive in workers.items():
                if alive:
                    tell(f"{'inference' if kind == 'infer' else 'refinement'} worker ready")
        except (urllib.error.URLError, ConnectionError):
            pass  # not up yet
        time.sleep(0.5)
    raise InputError(f"the services were not ready after {timeout:.0f} s")


def wait_while_running(processes, stopping, seconds: float | None = None) -> None:
    """Until SIGTERM, a service exits, or ``seconds`` pass (None: no limit)."""
    deadline = None if seconds is None else time.time() + seconds
    while not stopping and all(p.poll() is None for p in processes) and (deadline is None or time.time() < deadline):
        time.sleep(0.5)


def ingest_addresses(settings) -> str:
    """Where senders connect: the ingest address, or each receiver's (comma-separated, as Beamline takes them)."""
    from services.ingest.receive import part_address

    return ",".join(part_address(settings.ingest_bind, k) for k in range(settings.ingest_receivers))


def run(args):
    settings = settings_from(args, gateway_port=args.port, ingest_bind=args.bind, gateway_host=args.host,
                             ingest_receivers=args.receivers)
    refuse_open_exposure(settings, args.insecure)
    pva = pva_config(args)  # checked here: the ingest child would only log it
    check_receivers(settings, pva)
    also = f" and pvAccess channel {pva['channel']}" if pva else ""
    gateway_args = ["--insecure"] if args.insecure else []
    with services_running(settings, ingest_args=pva_command_line(args), gateway_args=gateway_args) as (processes,
                                                                                                        stopping):
        print(f"cdi-live is up: gateway http://{settings.gateway_host}:{settings.gateway_port}, "
              f"ingest {ingest_addresses(settings)}{also}, Redis {settings.redis_url}. Ctrl-C stops it.")
        wait_while_running(processes, stopping)
    failed = [p.args[-1] for p in processes if p.returncode not in (0, -2, -15, None, 130)]
    if failed:
        print(f"cdi-live: a service stopped unexpectedly: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
