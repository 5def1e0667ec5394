"""A server started by a test on 127.0.0.1: a free port, and the process kept up while the test talks to it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(cmd: list[str], port: int, ready_path: str, log_path: Path, timeout: float, env=None) -> Iterator[str]:
    """Run `cmd` (listening on `port`) until GET `ready_path` answers; yield its base URL; stop it after.

    Fails with the tail of its log if the process exits or is not ready within `timeout` seconds."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"{url}{ready_path}", timeout=2)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
