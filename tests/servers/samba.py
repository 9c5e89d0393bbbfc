"""A real SMB server for tests: Debian's Samba (`smbd`) on a high port of 127.0.0.1, with a temporary
smb.conf, its own private/lock/state folders and one user in a private passdb (tdbsam), serving one share
whose files the test writes directly in `share_dir`."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .processes import free_port

PASSWORD = "Smb-password-for-tests-1"


def missing_reason() -> str | None:
    """Why a real Samba server cannot run here, or None."""
    for program in ("smbd", "pdbedit"):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            return f"{program} is not installed (Debian: samba)"
    if os.geteuid() != 0:
        return "smbd serves files as the logged-in user only when it runs as root"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SambaServer:
    """smbd in a process group of its own (it forks one child per connection); `stop` ends the group."""

    def __init__(self, folder: Path, share: str = "share"):
        self.folder, self.share = folder, share
        self.port = free_port()
        self.user = getpass.getuser()
        self.share_dir = folder / share
        self.config = folder / "smb.conf"
        self._process: subprocess.Popen | None = None

    def url(self, path: str = "") -> str:
        return f"smb://127.0.0.1:{self.port}/{self.share}/{path}".rstrip("/")

    def storage_options(self) -> dict:
        """fsspec options without the password (that comes from the source's storage secret)."""
        return {"username": self.user, "register_session_retries": 0}

    def start(self) -> "SambaServer":
        for name in ("private", "lock", "state", "cache", "pid", "share"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        folder = self.folder
        self.config.write_text(f"""[global]
  smb ports = {self.port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  private dir = {folder}/private
  lock directory = {folder}/lock
  state directory = {folder}/state
  cache directory = {folder}/cache
  pid directory = {folder}/pid
  ncalrpc dir = {folder}/lock/ncalrpc
  passdb backend = tdbsam:{folder}/private/passdb.tdb
  log file = {folder}/smbd.log
  disable netbios = yes
  server role = standalone server
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2_10
  map to guest = never
[{self.share}]
  path = {self.share_dir}
  read only = no
  valid users = {self.user}
""")
        subprocess.run([_program("pdbedit"), "-s", str(self.config), "-a", "-u", self.user, "-t"],
                       input=f"{PASSWORD}\n{PASSWORD}\n", capture_output=True, text=True, check=True, timeout=60)
        self._process = subprocess.Popen([_program("smbd"), "--foreground", "--no-process-group", "-s",
                                          str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None:
                    log = self.folder / "smbd.log"
                    raise RuntimeError(f"smbd exited with {self._process.returncode}: "
                                       f"{log.read_text()[-2000:] if log.exists() else ''}")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("smbd did not listen within 60 s")

    def stop(self) -> None:
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            self._process = None

    def __enter__(self) -> "SambaServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
