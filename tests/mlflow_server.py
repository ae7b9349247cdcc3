"""A local MLflow tracking server for the tests: `mlflow server` on 127.0.0.1 (a free port), a SQLite
backend and an artifact root in a temp folder, the way README's "Running on a cluster" starts one on a login
node. Stopped afterwards: only the process group this helper started."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RUNNING: dict[str, subprocess.Popen] = {}     # url -> its server process


def crash(url: str) -> None:
    """Kill a server started here at once (SIGKILL to its process group), as a crashed login node would."""
    proc = _RUNNING[url]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def mlflow_server(folder: Path, timeout: float = 180):
    """Yields the server's URL; raises with the server's log if it is not up within `timeout` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _RUNNING[url] = proc
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start (exit {proc.poll()}):\n"
                                   f"{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _RUNNING.pop(url, None)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
