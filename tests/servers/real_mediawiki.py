"""A real MediaWiki (Debian's 1.39 package) on 127.0.0.1 for tests, with SQLite in a temporary folder.

`install.php` writes a LocalSettings.php into the folder; the wiki reads it through the
`MW_CONFIG_FILE` environment variable (MediaWiki ≥ 1.38 honours it in web requests and
maintenance scripts alike), so the machine-wide /var/lib/mediawiki/LocalSettings.php link that
the Debian package reads is never touched and two test runs cannot clash over it. PHP's own web
server serves it (`php -S`, with a few workers so parallel requests are parallel).

Pages are loaded with importTextFiles.php (no recent-changes rows, like a bulk import) and changed
with edit.php, deleteBatch.php and moveBatch.php (which do write them).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import requests

from .processes import free_port

MEDIAWIKI = Path("/usr/share/mediawiki")
MAINTENANCE = MEDIAWIKI / "maintenance"
ADMIN_PASSWORD = "Admin-password-for-tests-1"


def missing_reason() -> str | None:
    """Why a real MediaWiki cannot run here, or None."""
    if shutil.which("php") is None:
        return "php is not installed (Debian: php-cli php-sqlite3 php-intl php-mbstring php-xml)"
    if not (MEDIAWIKI / "api.php").exists():
        return f"MediaWiki is not installed at {MEDIAWIKI} (Debian: mediawiki)"
    modules = subprocess.run(["php", "-m"], capture_output=True, text=True).stdout.lower().split()
    if "pdo_sqlite" not in modules:
        return "PHP's pdo_sqlite module is missing (Debian: php-sqlite3)"
    return None


class RealMediaWiki:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api.php"
        self.settings_file = folder / "LocalSettings.php"
        self.env = {**os.environ, "MW_CONFIG_FILE": str(self.settings_file), "PHP_CLI_SERVER_WORKERS": "4"}
        self._server: subprocess.Popen | None = None
        self._server_log = None

    def __enter__(self) -> "RealMediaWiki":
        data = self.folder / "data"
        data.mkdir(parents=True)
        self._php(MAINTENANCE / "install.php", "--dbtype", "sqlite", "--dbpath", str(data), "--dbname", "wiki",
                  "--server", self.url, "--scriptpath", "", "--confpath", str(self.folder),
                  "--pass", ADMIN_PASSWORD, "--lang", "en", "TestWiki", "Admin")
        with self.settings_file.open("a") as settings:
            # Jobs would run inside API requests and slow them; the tests need none.
            settings.write("\n$wgJobRunRate = 0;\n")
        self._server_log = open(self.folder / "php-server.log", "wb")
        self._server = subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{self.port}", "-t", str(MEDIAWIKI)], env=self.env,
            stdout=self._server_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_until_ready()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            os.killpg(self._server.pid, signal.SIGTERM)  # php -S and its workers: its own process group
            self._server.wait(timeout=10)
        if self._server_log is not None:
            self._server_log.close()

    def _wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = requests.get(self.api_url, params={"action": "query", "meta": "siteinfo",
                                                            "format": "json", "formatversion": 2}, timeout=5)
                if answer.ok and "query" in answer.json():
                    return
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline or self._server.poll() is not None:
                log = (self.folder / "php-server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"MediaWiki at {self.api_url} did not start: {log}")
            time.sleep(0.2)

    def _php(self, script: Path, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(["php", str(script), *args], env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{script.name} failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
        return done.stdout

    # ---- content ----------------------------------------------------------------------------------
    def import_pages(self, pages: dict[str, str]) -> None:
        """Bulk-load pages (file name = title); importTextFiles.php writes no recent-changes rows."""
        folder = self.folder / f"import-{time.monotonic_ns()}"
        folder.mkdir()
        for title, text in pages.items():
            (folder / title).write_text(text)
        self._php(MAINTENANCE / "importTextFiles.php", *sorted(str(path) for path in folder.iterdir()))

    def edit(self, title: str, text: str) -> None:
        self._php(MAINTENANCE / "edit.php", "-u", "Admin", "-s", "test edit", title, stdin=text)

    def delete(self, title: str) -> None:
        listing = self.folder / f"delete-{time.monotonic_ns()}.txt"
        listing.write_text(title + "\n")
        self._php(MAINTENANCE / "deleteBatch.php", "-u", "Admin", "-r", "test delete", str(listing))

    def move(self, old: str, new: str) -> None:
        listing = self.folder / f"move-{time.monotonic_ns()}.txt"
        listing.write_text(f"{old}|{new}\n")
        self._php(MAINTENANCE / "moveBatch.php", "-u", "Admin", "-r", "test move", str(listing))

    def purge_recent_changes_before_the_newest(self) -> None:
        """What $wgRCMaxAge's purge (RecentChange::purgeExpiredChanges) does to older rows: delete them;
        revisions and logs stay."""
        with sqlite3.connect(self.folder / "data" / "wiki.sqlite") as db:
            db.execute("DELETE FROM recentchanges WHERE rc_timestamp < (SELECT MAX(rc_timestamp) FROM recentchanges)")

    def api(self, **params) -> dict:
        return requests.get(self.api_url, params={"format": "json", "formatversion": 2, **params}, timeout=10).json()

    def revision(self, title: str) -> int:
        pages = self.api(action="query", prop="info", titles=title)["query"]["pages"]
        return pages[0]["lastrevid"]
