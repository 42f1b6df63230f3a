"""docs/operations.md "Trying it on one machine, from a fresh clone" (PROTOCOL §12), run
as written: the fenced shell block of that section, in bash, from the repository's root —
a throwaway PostgreSQL cluster, two gateway homes with the same keys, the reference bank
and broker under load on both addresses, the active SIGKILLed, the takeover, the old
active back as standby, a clean switch-over — so the operator's set-up cannot rot.

Only the ports (7700, 7701, 7780, 7781: free ones instead, other tests may run) and
``T`` (a folder of this test's) are changed; everything else is the block's text.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pgcluster

ROOT = Path(__file__).resolve().parent.parent
SECTION = "### Trying it on one machine, from a fresh clone"
PORTS = ("7700", "7701", "7780", "7781")

#: What the block must print, in this order (the comments beside its commands say so).
EXPECTED = [
    "role: active (lease epoch 1)",
    "role: standby",
    "ready",
    "not ready: standby: another gateway of the pair is active",
    "took the lease (epoch 2): active",
    "role: active (lease epoch 2)",
    "role: standby",
    "sbdx_active 0.0",
    "sbdx_lease_epoch 0.0",
    "sbdx_active 1.0",
    "sbdx_lease_epoch 2.0",
    "refused POST /api/suspend: this gateway is a standby",
    "exit 1",
    "broker exit 0",
    "settled: every request sent has its outcome",
    "books: ",
    "role: active (lease epoch 3)",
]

#: ``curl -s URL`` for a machine without curl (the block uses nothing else of it).
CURL_SHIM = """#!{python}
import sys, urllib.error, urllib.request
url = sys.argv[-1]
url = url if "://" in url else "http://" + url
try:
    body = urllib.request.urlopen(url, timeout=10).read()
except urllib.error.HTTPError as exc:
    body = exc.read()
sys.stdout.write(body.decode())
"""


def doc_block() -> str:
    """The first ```sh block after the section's heading."""
    text = (ROOT / "docs" / "operations.md").read_text("utf-8")
    assert SECTION in text, f"docs/operations.md has no section {SECTION!r}"
    after = text[text.index(SECTION):]
    found = re.search(r"^```sh\n(.*?)^```$", after, re.S | re.M)
    assert found, f"no ```sh block in {SECTION!r}"
    return found.group(1)


def free_ports(n: int) -> list[str]:
    """n free loopback ports, none a substring of another (the block's sed swaps them)."""
    while True:
        socks = [socket.socket() for _ in range(n)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            ports = [str(s.getsockname()[1]) for s in socks]
        finally:
            for s in socks:
                s.close()
        if all(len(p) == 5 for p in ports) and len(set(ports)) == n:
            return ports


def test_the_one_machine_ha_walkthrough_of_the_docs_runs_as_written() -> None:
    if pgcluster.find_bindir() is None or shutil.which("createdb") is None:
        pytest.skip("no PostgreSQL server binaries or createdb: install Debian's postgresql")
    block = doc_block()
    folder = Path(tempfile.mkdtemp(prefix="sbdx-hadoc-"))  # short: the socket path
    os.chmod(folder, 0o755)  # the cluster's owner (postgres, as root) walks into it
    trial = folder / "t"
    assert block.count("T=/tmp/sbdx-ha;") == 1, "the block sets T=/tmp/sbdx-ha once"
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    assert all(old in block for old in PORTS)
    script = re.sub("|".join(PORTS), lambda m: ports[m.group(0)], block)
    script = script.replace("T=/tmp/sbdx-ha;", f"T={trial};")  # after: it may hold digits
    env = dict(os.environ)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    if shutil.which("curl") is None:
        shim = bin_dir / "curl"
        shim.write_text(CURL_SHIM.format(python=sys.executable))
        shim.chmod(0o755)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(bin_dir),
                                   env.get("PATH", "")])
    (folder / "block.sh").write_text(script)
    proc = subprocess.Popen(["bash", str(folder / "block.sh")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the block's own processes, none else
        out, _ = proc.communicate()
        out += "\n(the block did not end within 150 s)" + _logs(trial)
    finally:
        pgcluster.stop(trial / "pg")  # the block stops it; if it did not get there
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    at = 0
    for want in EXPECTED:
        hit = next((i for i in range(at, len(lines)) if want in lines[i]), None)
        assert hit is not None, f"{want!r} not printed (after line {at}):\n{out}"
        at = hit + 1


def _logs(trial: Path) -> str:
    """The last lines of each process's log, for a block that hung."""
    parts = []
    for log in sorted(trial.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"\n--- {log.name}\n" + "\n".join(tail))
    return "".join(parts)
