"""The drop-folder watcher (``gateway eod watch DIR``).

A file is complete when its ``.sig`` exists (§8: the ``.sig`` is written last).  Each
complete file is checked once and then moved, with its ``.sig``, into ``accepted/``
(valid, with or without discrepancies) or ``rejected/``, beside
``<name>.report.json`` and ``<name>.report.txt``.  The move is the record that a file
was processed, so a restart picks up exactly the files still in the folder.

Whoever writes DIR is not trusted with anything else.  The watcher never follows a
link: every folder it moves into is opened with ``O_NOFOLLOW`` and used by its
descriptor (``dir_fd``), so renaming ``accepted/`` and putting a link in its place
sends nothing anywhere; ``accepted/`` and ``rejected/`` must be the watcher's own and
writable by it alone, or nothing is sorted until they are fixed.  A file is first
moved, with its ``.sig``, into ``.checking/`` (the watcher's, 0700), then opened
there without following links and checked through that descriptor, so the bytes
checked are the bytes moved on: a dropped link is rejected as the link itself, never
read through.  A ``.sig`` is read bounded (signing.MAX_SIGNATURE_BYTES).

A corrected file for a day whose file was already accepted (the same name again) is
rejected as a duplicate, unless the watcher runs with ``replace``: then it is checked,
and if valid the accepted one moves, with its ``.sig`` and reports, into
``accepted/superseded/`` (a numbered slot there if that name is taken) and the new one
takes its place.  An invalid replacement is rejected and the accepted file stays.

Steps per file, each safe to repeat after a crash: move the file, then its ``.sig``,
into ``.checking/`` → check → write the reports into the destination → move the file
→ move the ``.sig``.  A ``.sig`` left alone whose file already sits further on
without one is a move interrupted by a crash, and is finished; files left in
``.checking/`` are checked first.  Never more than one watcher per folder
(:func:`hold_folder`).  A journal that cannot be read (the PostgreSQL server down, a
SQLite journal too old) judges nothing: the pass stops with an error, and the file
stays in ``.checking/`` for the next one.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.exitcodes import EXIT_DISCREPANCIES, EXIT_FAILED, EXIT_OK, EXIT_REJECTED
from gateway.filemodes import DIR_MODE, create_private
from gateway.registry import RegistryRefusal
from gateway.store import StoreTooOld, StoreUnavailable

from .check import CheckReport, Opened, Rejected, check_opened, signature_of
from .report import as_json, as_text

ACCEPTED, REJECTED = "accepted", "rejected"
#: In ``accepted/``: the files a corrected one replaced (``--replace``), with their reports.
SUPERSEDED = "superseded"
#: The watcher's own folder in DIR, where a file is checked (hidden: never a drop).
CHECKING = ".checking"
SIG = ".sig"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Log = Callable[[str], None]
#: Told each report once its file is sorted (the §10 alerts of eod watch).
Judged = Callable[[CheckReport], None]

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What a watcher did: files by verdict, replacements, passes that sorted nothing."""

    accepted: int = 0
    discrepant: int = 0
    rejected: int = 0
    replaced: int = 0
    errors: int = 0

    def count(self, report: CheckReport) -> None:
        if not report.valid:
            self.rejected += 1
        elif report.exit_code == EXIT_DISCREPANCIES:
            self.discrepant += 1
        else:
            self.accepted += 1

    @property
    def exit_code(self) -> int:
        """``eod watch --once``: 1 the folder could not be sorted or the journal not
        read, 2 a file was rejected,
        3 one had discrepancies, 0 every file accepted and reconciled (or none there)."""
        if self.errors:
            return EXIT_FAILED
        if self.rejected:
            return EXIT_REJECTED
        if self.discrepant:
            return EXIT_DISCREPANCIES
        return EXIT_OK

    def text(self) -> str:
        files = self.accepted + self.discrepant + self.rejected
        text = (f"{files} file(s): {self.accepted} accepted, {self.discrepant} accepted with "
                f"discrepancies, {self.rejected} rejected, {self.replaced} replaced an "
                "accepted file")
        if self.errors:
            text += (f"; {self.errors} pass(es) judged nothing (the folder could not be"
                     " sorted, or the journal not read)")
        return text


class Unusable(Exception):
    """A folder the watcher would move files into is a link, no folder, or not its own;
    the message says what to do."""


class FolderBusy(Exception):
    """Another watcher holds the folder; the message says what to do."""


def hold_folder(folder: Path) -> int:
    """Lock the folder for this watcher: an exclusive ``flock`` on the folder itself,
    held by the returned descriptor (close it to let go; the system lets go when the
    process ends, however it ends).  :class:`FolderBusy` if another watcher holds it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(f"another `gateway eod watch` is running on {folder} (one watcher "
                         "per folder): stop it first, or leave the folder to it") from None
    except OSError as exc:  # a file system without locks (some network ones)
        log.warning("cannot lock %s (%s): make sure no other watcher runs on it",
                    folder, exc.strerror)
    return fd


# --- folders, by descriptor -------------------------------------------------------
def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _exists(name: str, dir_fd: int) -> bool:
    return _lstat(name, dir_fd) is not None


def _refusal(where: str, name: str, st: os.stat_result, private: bool) -> str | None:
    """Why the watcher must not move files into this entry; None if it may."""
    path = f"{where}/{name}"
    if stat.S_ISLNK(st.st_mode):
        return (f"{name} in {where} is a symbolic link; the watcher never moves a file "
                f"through a link (whoever writes the folder could send files anywhere). "
                f"Replace it with a folder of your own: rm {path} && mkdir -m 700 {path}")
    if not stat.S_ISDIR(st.st_mode):
        return f"{name} in {where} is not a directory; move it away"
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & (0o077 if private else 0o022):
        need = "0700" if private else "writable by it alone"
        return (f"{name} in {where} is not the watcher's own folder (owner uid {st.st_uid}, "
                f"mode {mode:04o}; it must be uid {os.geteuid()}'s and {need}): fix its "
                f"owner and mode, or move it away")
    return None


def _open_dir(parent: int, where: str, name: str, *, create: bool,
              private: bool = False) -> int | None:
    """The descriptor of folder ``name`` in ``parent``, never through a link; created
    0700 if missing and ``create`` (else None).  :class:`Unusable` if it may not hold
    the watcher's files."""
    if create and not _exists(name, parent):
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        st = _lstat(name, parent)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and st is not None:
            raise Unusable(_refusal(where, name, st, private) or str(exc)) from None
        raise
    problem = _refusal(where, name, os.fstat(fd), private)
    if problem is not None:
        os.close(fd)
        raise Unusable(problem)
    return fd


@contextmanager
def _dir(parent: int, where: str, name: str, *, create: bool,
         private: bool = False) -> Iterator[int | None]:
    fd = _open_dir(parent, where, name, create=create, private=private)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _numbered(dest: int) -> list[str]:
    """The numbered slots ``1/``, ``2/``, … of a destination (real folders only)."""
    names = [e.name for e in os.scandir(dest)
             if e.name.isdigit() and e.is_dir(follow_symlinks=False)]
    return sorted(names, key=int)


def _holding(dest: int, where: str, name: str) -> str | None:
    """The slot of ``dest`` (``""`` itself, or a number) holding ``name``, if any."""
    if _exists(name, dest):
        return ""
    for slot in _numbered(dest):
        with _dir(dest, where, slot, create=False) as fd:
            if fd is not None and _exists(name, fd):
                return slot
    return None


def _free_slot(dest: int, where: str, name: str) -> str:
    """The first slot of ``dest`` not holding ``name``: nothing is ever overwritten."""
    taken = (name, name + SIG)
    if not any(_exists(n, dest) for n in taken):
        return ""
    for slot in _numbered(dest):
        with _dir(dest, where, slot, create=False) as fd:
            if fd is not None and not any(_exists(n, fd) for n in taken):
                return slot
    n = 1
    while _exists(str(n), dest):
        n += 1
    return str(n)


@contextmanager
def _slot(dest: int, where: str, slot: str) -> Iterator[int]:
    """The slot's descriptor (``dest`` itself for ``""``), created 0700 if missing."""
    if slot == "":
        yield dest
        return
    with _dir(dest, where, slot, create=True) as fd:
        assert fd is not None
        yield fd


# --- one sweep ----------------------------------------------------------------------
def complete_files(top: int) -> list[str]:
    """Names in the folder whose ``.sig`` exists (hidden temp files and folders
    skipped; a link is listed, to be refused)."""
    out = []
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        name = entry.name
        if (name.startswith(".") or name.endswith(SIG) or name in (ACCEPTED, REJECTED)
                or entry.is_dir(follow_symlinks=False)):
            continue
        sig = _lstat(name + SIG, top)
        if sig is not None and not stat.S_ISDIR(sig.st_mode):
            out.append(name)
    return out


@dataclass
class _Pass:
    """What one sweep needs besides the folder: the home, the log, who is told each
    report, whether a valid file replaces an accepted one, and the tally to count in."""

    home: Path
    log: Log
    judged: Judged | None
    replace: bool
    tally: Tally


def sweep(home: Path, folder: Path, log: Log, judged: Judged | None = None, *,
          replace: bool = False, tally: Tally | None = None) -> int:
    """One pass over the folder; the number of files processed (each report handed to
    ``judged`` once the file is sorted, and counted in ``tally``).  ``replace``: a valid
    file of a name already accepted takes the accepted one's place (module doc)."""
    run = _Pass(home, log, judged, replace, tally if tally is not None else Tally())
    try:
        top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        log(f"error: cannot read {folder}: {exc.strerror}")
        run.tally.errors += 1
        return 0
    try:
        return _sweep(run, folder, top)
    except Unusable as exc:
        log(f"error: cannot sort files: {exc}")
        run.tally.errors += 1
        return 0
    except (StoreUnavailable, StoreTooOld, RegistryRefusal) as exc:
        log(f"error: cannot check files against the journal: {exc}; nothing was judged, "
            f"the file waits in {folder / CHECKING} and is checked first at the next pass")
        run.tally.errors += 1
        return 0
    finally:
        os.close(top)


def _sweep(run: _Pass, folder: Path, top: int) -> int:
    log = run.log
    for name in (ACCEPTED, REJECTED, CHECKING):  # refuse up front: nothing half-sorted
        st = _lstat(name, top)
        problem = st and _refusal(str(folder), name, st, private=name == CHECKING)
        if problem:
            raise Unusable(problem)
    if not _exists(CHECKING, top) and not complete_files(top):
        _finish_interrupted(folder, top, None, log)  # DIR itself is left untouched
        return 0
    done = 0
    with _dir(top, str(folder), CHECKING, create=True, private=True) as checking:
        assert checking is not None
        _finish_interrupted(folder, top, checking, log)
        for name in _staged(checking):
            done += _process(run, folder, top, checking, name)
        for name in complete_files(top):
            if _stage(top, checking, name):
                done += _process(run, folder, top, checking, name)
    try:
        os.rmdir(CHECKING, dir_fd=top)  # kept only while it holds something
    except OSError:
        pass
    return done


def _staged(checking: int) -> list[str]:
    """Files left in ``.checking/`` by a watcher that stopped: checked first."""
    return sorted(e.name for e in os.scandir(checking) if not e.name.endswith(SIG))


def _stage(top: int, checking: int, name: str) -> bool:
    """Move the file, then its ``.sig``, into ``.checking/``; False if one of that
    name is still there."""
    if _exists(name, checking) or _exists(name + SIG, checking):
        return False
    os.rename(name, name, src_dir_fd=top, dst_dir_fd=checking)
    try:
        os.rename(name + SIG, name + SIG, src_dir_fd=top, dst_dir_fd=checking)
    except FileNotFoundError:  # taken away since: the check says it is missing
        pass
    return True


def _finish_interrupted(folder: Path, top: int, checking: int | None, log: Log) -> None:
    """Move a lone ``.sig`` to its file, if a crash stopped between the two moves."""
    for fd in (top, checking):
        if fd is None:
            continue
        for sig in sorted(e.name for e in os.scandir(fd) if e.name.endswith(SIG)):
            name = sig[: -len(SIG)]
            if name and not _exists(name, fd):
                _follow_file(folder, top, checking, fd, name, log)


def _follow_file(folder: Path, top: int, checking: int | None, fd: int, name: str,
                 log: Log) -> None:
    """Move ``name.sig`` from ``fd`` to where its file went without it, if anywhere."""
    sig = name + SIG
    if (fd == top and checking is not None and _exists(name, checking)
            and not _exists(sig, checking)):
        os.rename(sig, sig, src_dir_fd=top, dst_dir_fd=checking)
        log(f"finished moving {sig} into {CHECKING}")
        return
    for dest_name in (ACCEPTED, REJECTED):
        with _dir(top, str(folder), dest_name, create=False) as dest:
            where = f"{folder}/{dest_name}"
            slot = None if dest is None else _holding(dest, where, name)
            if dest is None or slot is None:
                continue
            with _slot(dest, where, slot) as target:
                if not _exists(sig, target):
                    os.rename(sig, sig, src_dir_fd=fd, dst_dir_fd=target)
                    log(f"finished moving {sig} into {Path(dest_name, slot)}")
                    return


def _process(run: _Pass, folder: Path, top: int, checking: int, name: str) -> int:
    """Check one staged file and move it, with its ``.sig``, beside its report."""
    with _dir(top, str(folder), ACCEPTED, create=False) as accepted:
        previous = (None if accepted is None
                    else _holding(accepted, f"{folder}/{ACCEPTED}", name))
    if previous is not None and not run.replace:
        report = CheckReport(file=str(folder / name), reason=(
            f"duplicate: {name} was already accepted ({Path(ACCEPTED, previous, name)}); "
            "a file is processed once. If this is a corrected file to take its place, "
            f"drop it again and run `gateway eod watch {folder} --once --replace` (stop "
            "the running watcher first, or run it with --replace; docs/eod.md)"))
    else:
        report = _checked(run.home, folder / name, checking)
    superseded = None
    if previous is not None and run.replace and report.valid:
        superseded = _supersede(folder, top, previous, name)
        run.tally.replaced += 1
    dest_name = ACCEPTED if report.valid else REJECTED
    with _dir(top, str(folder), dest_name, create=True) as dest:
        assert dest is not None
        where = f"{folder}/{dest_name}"
        slot = _free_slot(dest, where, name)
        with _slot(dest, where, slot) as target:
            _write_atomic(target, f"{name}.report.json", as_json(report) + "\n")
            _write_atomic(target, f"{name}.report.txt", as_text(report))
            os.rename(name, name, src_dir_fd=checking, dst_dir_fd=target)
            if _exists(name + SIG, checking):
                os.rename(name + SIG, name + SIG, src_dir_fd=checking, dst_dir_fd=target)
    run.tally.count(report)  # sorted: counted before anything else can be interrupted
    verdict = ("accepted" if report.valid else "rejected") + f" (exit {report.exit_code})"
    note = ""
    if superseded is not None:
        note = (f"; replaces the file accepted before, kept in {superseded} with its "
                "reports")
    elif previous is not None and run.replace:
        note = f"; {Path(ACCEPTED, previous, name)} stays the accepted file"
    run.log(f"{name}: {verdict} -> {Path(dest_name, slot)}"
            + (f": {report.reason}" if report.reason else "") + note)
    if run.judged is not None:
        run.judged(report)
    return 1


def _supersede(folder: Path, top: int, slot: str, name: str) -> Path:
    """Move the accepted ``name`` (in ``slot`` of ``accepted/``), its ``.sig`` and its
    reports into ``accepted/superseded/`` (a free numbered slot there); where it went.
    The file moves last: while it is still in ``accepted/`` the move is not done, and
    a pass after a crash repeats it (what already moved stays where it went)."""
    where = f"{folder}/{ACCEPTED}"
    with _dir(top, str(folder), ACCEPTED, create=False) as accepted:
        assert accepted is not None
        with _slot(accepted, where, slot) as source, \
                _dir(accepted, where, SUPERSEDED, create=True) as kept:
            assert kept is not None
            kept_where = f"{where}/{SUPERSEDED}"
            into = _free_slot(kept, kept_where, name)
            with _slot(kept, kept_where, into) as target:
                for part in (f"{name}.report.json", f"{name}.report.txt", name + SIG, name):
                    if _exists(part, source):
                        os.rename(part, part, src_dir_fd=source, dst_dir_fd=target)
    return Path(ACCEPTED, SUPERSEDED, into, name)


def _write_atomic(dir_fd: int, name: str, text: str) -> None:
    tmp = f".{name}.tmp"
    with os.fdopen(create_private(Path(tmp), dir_fd=dir_fd), "w", encoding="utf-8") as f:
        f.write(text)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


# --- checking what was staged -----------------------------------------------------------
def _checked(home: Path, path: Path, checking: int) -> CheckReport:
    """The staged file, opened without following links, checked through that
    descriptor; a bug must not jam the folder."""
    try:
        fd = _open_staged(checking, path.name, "file:", path.name)
        with os.fdopen(fd, "rb") as f:
            return check_opened(home, Opened(path, f, lambda: _staged_signature(checking,
                                                                               path.name)))
    except Rejected as exc:
        return CheckReport(file=str(path), reason=str(exc))
    except (StoreUnavailable, StoreTooOld, RegistryRefusal):
        raise  # the journal's (registry's) fault, not the file's: it waits (sweep)
    except Exception:  # noqa: BLE001 - logged with its traceback, the file is rejected
        log.exception("checking %s failed", path.name)
        return CheckReport(file=str(path), reason="check failed: internal error (see the "
                                                  "watcher's log); the file was not judged")


def _staged_signature(checking: int, name: str) -> bytes:
    sig = name + SIG
    if not _exists(sig, checking):
        raise Rejected(f"legitimacy: signature file {sig} is missing")
    fd = _open_staged(checking, sig, "legitimacy:", f"signature file {sig}")
    try:
        return signature_of(fd, sig)
    finally:
        os.close(fd)


def _open_staged(checking: int, name: str, step: str, what: str) -> int:
    """Open a staged file for reading: a regular file with no other link, never a
    symbolic link (refused with ``step`` and the reason)."""
    st = os.stat(name, dir_fd=checking, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise Rejected(f"{step} {what} is a symbolic link; the watcher does not follow "
                       "links: drop the file itself (the link was moved, not followed)")
    if not stat.S_ISREG(st.st_mode):
        raise Rejected(f"{step} {what} is not a regular file")
    fd = os.open(name, _FILE_FLAGS, dir_fd=checking)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise Rejected(f"{step} {what} was replaced while it was being opened")
    if opened.st_nlink > 1:
        os.close(fd)
        raise Rejected(f"{step} {what} has {opened.st_nlink} links: a copy under another "
                       "name could change it after it is judged; drop a file of its own")
    return fd
