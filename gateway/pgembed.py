"""Embedded PostgreSQL, run from the binaries that the ``pgserver`` wheel ships.

Only ``pgserver``'s binaries are used, not its Python wrapper, so the server
listens on a loopback TCP port (gateway workers and load generators in other
processes connect to it) and its settings are ours. PostgreSQL refuses to run
as root, so under root the server runs as the system user ``tapgate-pg``,
created on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pathlib
import pwd
import shutil
import socket
import stat
import subprocess
import time
from typing import Iterator

from gateway.errors import EmbeddedPostgresError
from gateway.logs import log_event

log = logging.getLogger(__name__)

SYSTEM_USER = "tapgate-pg"
DATABASE = "tapgate"

# Settings written to postgresql.auto.conf at initdb. fsync stays on: a tap is
# acknowledged only after its commit is durable.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "synchronous_commit": "on",
    "fsync": "on",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "2GB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "timezone": "'UTC'",
}


def default_data_dir() -> pathlib.Path:
    """Return ``$XDG_STATE_HOME/tapgate/pgdata``, or ``~/.local/state/tapgate/pgdata``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(state) / "tapgate" / "pgdata"


def _bin_dir() -> pathlib.Path:
    # Locate the wheel without importing pgserver, whose import warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the pgserver package, which is not installed",
            "内嵌 PostgreSQL 需要 pgserver 软件包，但它没有安装",
            "pip install pgserver, or give an external server with --dsn / 请安装 pgserver，或用 --dsn 指定外部服务器",
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise EmbeddedPostgresError(
            f"running as root, the embedded PostgreSQL needs the system user {SYSTEM_USER}, and useradd failed: {detail.strip()}",
            f"以 root 运行时，内嵌 PostgreSQL 需要系统用户 {SYSTEM_USER}，但 useradd 失败：{detail.strip()}",
            "create the user by hand, run as another user, or give an external server with --dsn",
        ) from exc
    return pwd.getpwnam(SYSTEM_USER)


def _allow_traversal(path: pathlib.Path) -> None:
    # The server user must reach the data directory: add only the search (x)
    # bit for others on each parent that lacks it, never the read bit.
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            log_event(log, logging.INFO, "pgembed.parent_made_traversable", path=parent)


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir``, initialised on first start.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The
    server is stopped by :meth:`stop` only if this object started it.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = pathlib.Path(data_dir) if data_dir else default_data_dir()
        self.data_dir = self.data_dir.absolute()
        self.bin_dir = _bin_dir()
        self.port: int | None = None
        self._started_here = False
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = _ensure_system_user()

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL is not running", "内嵌 PostgreSQL 未在运行")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_file(self) -> pathlib.Path:
        return self.data_dir / "postgresql.log"

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        try:
            return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout,
                                  cwd="/", **kwargs)
        except subprocess.CalledProcessError as exc:
            tail = self._log_tail()
            raise EmbeddedPostgresError(
                f"{program} failed with exit status {exc.returncode}: {(exc.stderr or exc.stdout).strip()}{tail}",
                f"{program} 执行失败，退出码 {exc.returncode}",
                f"see the server log {self.log_file} / 请查看服务器日志 {self.log_file}",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{program} timed out after {timeout:.0f} s",
                f"{program} 在 {timeout:.0f} 秒后超时",
                f"see the server log {self.log_file} / 请查看服务器日志 {self.log_file}",
            ) from exc

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-5:]
        except OSError:
            return ""
        return "\n" + "\n".join(lines) if lines else ""

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._user is not None:
            _allow_traversal(self.data_dir)
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
            os.chmod(self.data_dir, 0o700)
            bin_root = self.bin_dir.parent
            _allow_traversal(bin_root)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _initdb(self) -> None:
        if any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(
                f"data directory {self.data_dir} is not empty and holds no PostgreSQL cluster",
                f"数据目录 {self.data_dir} 不为空，且不是 PostgreSQL 数据目录",
                "give an empty or new directory with --data-dir / 请用 --data-dir 指定一个空目录或新目录",
            )
        self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "-U", "postgres")
        with open(self.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            for key, value in SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        log_event(log, logging.INFO, "pgembed.initialised", data_dir=self.data_dir)

    def _running_port(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 4:
            return None
        pid, port = int(lines[0]), int(lines[3])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def start(self) -> str:
        """Start the server (initialising the cluster if needed) and return its DSN."""
        self._prepare_dir()
        if not self.initialised():
            self._initdb()

        running = self._running_port()
        if running is not None:
            self.port = running
            log_event(log, logging.INFO, "pgembed.already_running", port=running, data_dir=self.data_dir)
        else:
            # A server stopped by this object starts again on the same port, so
            # clients holding its DSN reconnect as after any restart.
            if self.port is None:
                self.port = _free_port()
            self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                      "-o", f"-p {self.port}", "start", timeout=90)
            self._started_here = True
            log_event(log, logging.INFO, "pgembed.started", port=self.port, data_dir=self.data_dir)
        self._ensure_database()
        return self.dsn

    def _ensure_database(self) -> None:
        psql = self.bin_dir / "psql"
        base = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            found = subprocess.run(
                [str(psql), base, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                capture_output=True, text=True)
            if found.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL on port {self.port} does not accept connections: {found.stderr.strip()}",
                    f"内嵌 PostgreSQL（端口 {self.port}）不接受连接",
                    f"see the server log {self.log_file} / 请查看服务器日志 {self.log_file}",
                )
            time.sleep(0.2)
        if found.stdout.strip() != "1":
            subprocess.run([str(psql), base, "-qc", f"CREATE DATABASE {DATABASE}"],
                           check=True, capture_output=True, text=True)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if this object started it. ``mode`` is pg_ctl's: smart, fast or immediate."""
        if not self._started_here:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop", timeout=90)
        self._started_here = False
        log_event(log, logging.INFO, "pgembed.stopped", port=self.port, mode=mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server on the same port, as a fault test or an operator would."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop", timeout=90)
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                  "-o", f"-p {self.port}", "start", timeout=90)
        log_event(log, logging.INFO, "pgembed.restarted", port=self.port, mode=mode)

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedPostgres":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded(data_dir: str | os.PathLike[str] | None = None) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
