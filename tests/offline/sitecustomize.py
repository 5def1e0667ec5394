"""Loaded by every Python process whose PYTHONPATH holds this directory (the offline e2e test).

Refuses every outbound connection except loopback and records each attempt (host, port,
program) in $OFFLINE_LOG, so the test can show the default path needs no network at all.
"""

import os
import socket
import sys

_connect = socket.socket.connect
LOOPBACK = ("127.", "::1", "localhost")


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(LOOPBACK):
        with open(os.environ["OFFLINE_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{host}:{address[1]} {' '.join(sys.argv[:3])}\n")
        raise OSError(f"offline test: outbound connection to {address} refused")
    return _connect(self, address)


if os.environ.get("OFFLINE_LOG"):
    socket.socket.connect = _guarded_connect
