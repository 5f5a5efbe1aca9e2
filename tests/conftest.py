"""Shared fixtures. Every test runs with the network disabled: a test that opens a socket fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0] if isinstance(address, tuple) else address
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "") or str(host).startswith("127.")


def _guard(method):
    def connect(self, address):
        if not _is_local(address):
            raise RuntimeError(f"test tried to open a network connection to {address!r}")
        return method(self, address)

    return connect


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loopback only (multi-rank tests rendezvous on 127.0.0.1); anything else raises."""
    monkeypatch.setattr(socket.socket, "connect", _guard(_real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _guard(_real_connect_ex))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    yield


def run_cli(*args: str, timeout: float = 60, cwd: Path | None = None, env: dict | None = None):
    """Run `python -m planner` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "planner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=full_env,
    )


@pytest.fixture
def cli():
    return run_cli
