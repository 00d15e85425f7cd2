"""Private Redis and Postgres servers on spare loopback ports, which a test may stop and start.

The shared services on 5432/6379 serve every engineer's test runs; an outage test must never
touch them. These servers live in a temporary directory removed at the end. Postgres refuses
to run as root, so under root (CI) its cluster is created and run as the `postgres` user.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("outage tests need Postgres's initdb and pg_ctl (apt install postgresql)")


class PrivateRedis:
    """`redis-server` without persistence: a restart comes back empty, like a lost Redis."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start_sync(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("outage tests need redis-server (apt install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop_sync(self, *, save: bool = False) -> None:
        """Stop it; with `save` its keys are written out and come back at the next start, as
        a stock Redis (RDB snapshots on shutdown) does, else the next start is empty."""
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        if self.process is not None and self.process.poll() is None:
            if save:
                client = redis.Redis(port=self.port)
                with contextlib.suppress(redis.ConnectionError):
                    client.shutdown(save=True)
                client.close()
            else:
                self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self, *, save: bool = False) -> None:
        await asyncio.to_thread(lambda: self.stop_sync(save=save))


class PrivatePostgres:
    """A throwaway cluster (trust auth, no fsync) controlled with pg_ctl."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.bin = _postgres_bin()
        self.dir = workdir / "postgres"
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.dir, timeout=60)

    def init_sync(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E",
                  "UTF8", "--no-sync", "--no-instructions")  # fmt: skip

    def start_sync(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "30", "start")  # fmt: skip

    def stop_sync(self) -> None:
        # fast: what a restart or an operator does; sessions are cut off at once.
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class PrivateStores:
    """One private Redis and one private Postgres, started together, removed together."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="relay-outage-"))
        self.workdir.chmod(0o755)  # the postgres user must reach its directory inside
        self.redis = PrivateRedis(self.workdir)
        self.postgres = PrivatePostgres(self.workdir)

    def start_sync(self) -> None:
        self.postgres.init_sync()
        self.postgres.start_sync()
        self.redis.start_sync()

    def ensure_running_sync(self) -> None:
        """After a test that may have left a store stopped (a failed assertion mid-outage)."""
        if not self.postgres.running():
            self.postgres.start_sync()
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.start_sync()

    def close_sync(self) -> None:
        with contextlib.suppress(Exception):
            self.redis.stop_sync()
        with contextlib.suppress(Exception):
            if self.postgres.running():
                self.postgres.stop_sync()
        shutil.rmtree(self.workdir, ignore_errors=True)
