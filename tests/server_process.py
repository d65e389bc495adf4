"""`rwkv-np serve` in a subprocess on 127.0.0.1, for the server tests (not a test module).

    with ServerProcess("--max-batch", "8") as server:   # the demo model unless --model is given
        httpx.get(server.url + "/health")
        server.stop(signal.SIGTERM)                       # -> the exit status

The server is started with --port 0 and the port read from the line it prints when ready (after
loading the model and compiling its kernels), so there is no race for a free port.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO

for module in ("starlette", "uvicorn", "openai", "httpx"):
    pytest.importorskip(module, reason=f"the server tests need {module}: pip install '.[test]'")

READY = re.compile(r"listening on (http://\S+)/v1")


class ServerProcess:
    def __init__(self, *args, ready_timeout: float = 300.0):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "rwkv_np", "serve", "--port", "0",
                                      "--log-level", "warning", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, encoding="utf-8", env=env)
        self.log: list[str] = []
        ready = threading.Event()
        self.url = None

        def drain():  # read stderr to the end, so the pipe never fills up
            for line in self.proc.stderr:
                self.log.append(line)
                match = READY.search(line)
                if match and self.url is None:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(ready_timeout) or self.url is None:
            self.proc.kill()
            raise RuntimeError("rwkv-np serve did not start:\n" + "".join(self.log))

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def rss_mb(self) -> float:
        """The server's resident memory now (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll predicate() until it is truthy (returned) or the time is up (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not true after {timeout} s: {predicate}")
