"""The portal's web server: ``--workers`` daphne processes (HTTP and WebSockets) sharing one
listening socket, which this process binds and hands each of them (``daphne --fd``); the kernel
spreads the connections. One Python process runs on one core at a time (its interpreter lock),
and every request spends most of its time in Python: a second process lets a 2-core portal
answer on both (bench/bench_api_load.py measures 1 against N in one run). Nothing is shared
between them but the database and Redis (sessions, the channel layer, stream leases, throttles).

SIGTERM or SIGINT stops them all; when one exits, the others are stopped and its exit code is
this process's.

    python -m portal.serve --host 127.0.0.2 --port 8000 [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

STOP_WAIT_S = 10.0


def default_workers() -> int:
    configured = os.environ.get("PORTAL_WEB_WORKERS")
    if configured:
        return max(1, int(configured))
    return max(1, min(2, os.cpu_count() or 1))


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--application", default="portal.asgi:application")
    args = parser.parse_args(argv)
    if ":" in args.host:  # daphne adopts an inherited socket as IPv4 only: one process binds itself
        os.execv(
            sys.executable, [sys.executable, "-m", "daphne", "-b", args.host, "-p", str(args.port), args.application]
        )
    sock = listening_socket(args.host, args.port)
    command = [sys.executable, "-m", "daphne", "--fd", str(sock.fileno()), args.application]
    children = [subprocess.Popen(command, pass_fds=(sock.fileno(),)) for _ in range(max(1, args.workers))]
    stopping = False

    def stop(signum=None, frame=None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"portal web server on {args.host}:{args.port}, {len(children)} processes", flush=True)
    code = 0
    while True:
        ended = [child for child in children if child.poll() is not None]
        if ended:
            code = 0 if stopping else (ended[0].returncode or 1)
            break
        time.sleep(0.2)
    stop()
    deadline = time.monotonic() + STOP_WAIT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code


if __name__ == "__main__":
    sys.exit(main())
