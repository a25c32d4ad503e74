"""Run `larimar serve` as a real process on a free loopback port (crash and browser tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m larimar.cli serve [--model M] --db D --port P` on 127.0.0.1 (no --model: the built-in model).

    `db` is a SQLite path or a postgresql:// URL."""

    def __init__(self, model: Path | None, db: Path | str, log: Path, threads: int | None = 1,
                 snapshot_every: int | None = None) -> None:
        self.model, self.db, self.log, self.threads = model, db, log, threads
        self.snapshot_every = snapshot_every
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        if self.threads is not None:  # few threads: many restarts on a shared machine stay quick
            env["OMP_NUM_THREADS"] = str(self.threads)
        model = [] if self.model is None else ["--model", str(self.model)]
        snapshots = [] if self.snapshot_every is None else ["--snapshot-every", str(self.snapshot_every)]
        command = [sys.executable, "-m", "larimar.cli", "serve", *model, "--db", str(self.db), *snapshots,
                   "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not answer within {timeout} s; log:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
