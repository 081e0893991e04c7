"""Networking helpers for tests: a free TCP port on 127.0.0.1 (for a server or a torchrun rendezvous: port 0 would
hang torchrun), and a live `nemoh serve` subprocess started and waited for until /health answers."""
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: str | Path, *args: str, port: int | None = None,
                 timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """`nemoh serve path --port P *args` in a subprocess; returns (process, base URL) once /health answers.
    A server that exits first raises with its output; one that does not answer in `timeout_s` is killed."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nemoh.cli.main", "serve", str(path), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s      # generous: start-up imports torch on a loaded machine
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/health", timeout=1)
            return proc, base
        except httpx.TransportError as e:
            if proc.poll() is not None:
                raise RuntimeError(f"nemoh serve exited with {proc.returncode}:\n{proc.stdout.read()}") from e
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"nemoh serve did not answer /health within {timeout_s} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@contextmanager
def serving(path: str | Path, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """start_server as a context: the server is stopped on exit (for module-scoped fixtures)."""
    proc, base = start_server(path, *args)
    try:
        yield proc, base
    finally:
        stop_server(proc)


def send_json(handler: BaseHTTPRequestHandler, body: object, status: int = 200) -> None:
    """Answer a stand-in server's request (an http.server handler) with `body` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
