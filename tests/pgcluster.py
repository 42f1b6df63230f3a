"""A throwaway PostgreSQL cluster for the tests (standard library only).

``initdb`` in a folder of its own, the server listening on a unix socket in that folder
only (no TCP), ``fsync`` and ``synchronous_commit`` on (the commit cost measured is the
real one), trust authentication on that socket.  Debian's binaries live in
``/usr/lib/postgresql/<version>/bin``; initdb refuses to run as root, so as root the
cluster is created and run as the ``postgres`` user (``runuser``) in a folder it owns.

    python3 tests/pgcluster.py start DIR   # prints the URL (postgresql://…?host=DIR)
    python3 tests/pgcluster.py stop DIR

.ci/run starts one for the whole run and exports its URL as ``SBDX_TEST_POSTGRES_URL``;
tests/pg.py starts its own when that is not set and the binaries exist.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The cluster's superuser; the tests connect as it over the unix socket.
SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $PATH first, then Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name)
                      if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the cluster's owner: ``postgres`` when we are root."""
    if os.geteuid() == 0:
        runuser = (shutil.which("runuser") or next(
            (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), "runuser"))
        return [runuser, "-u", SUPERUSER, "--", *argv]
    return argv


def url(folder: Path) -> str:
    return f"postgresql://{SUPERUSER}@/postgres?host={folder}"


def start(folder: Path) -> str:
    """Create and start a cluster in ``folder`` (created if missing); its URL."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb): install Debian's "
                           "`postgresql` package (apt-get install postgresql)")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, SUPERUSER, SUPERUSER)
    data = folder / "data"
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER,
                              "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    options = (f"-c listen_addresses='' -k {folder} -c fsync=on -c synchronous_commit=on"
               " -c max_connections=50 -c shared_buffers=32MB")
    subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l",
                              str(folder / "server.log"), "-w", "-t", "60", "-o", options,
                              "start"]), check=True, stdout=subprocess.DEVNULL)
    return url(folder)


def stop(folder: Path) -> None:
    """Stop the cluster in ``folder`` (fast shutdown) and remove the folder."""
    bindir = find_bindir()
    data = folder / "data"
    if bindir is not None and (data / "postmaster.pid").exists():
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                  "-w", "stop"]), check=False, stdout=subprocess.DEVNULL)
    shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: pgcluster.py start|stop DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1]).resolve()
    if argv[0] == "start":
        try:
            print(start(folder))
        except subprocess.CalledProcessError as e:
            err = e.stderr.decode(errors="replace") if e.stderr else ""
            print(f"pgcluster: {' '.join(map(str, e.cmd))} failed ({e.returncode}): {err}"
                  f" (server log: {folder / 'server.log'})", file=sys.stderr)
            return 1
    else:
        stop(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
