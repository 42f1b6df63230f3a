"""The process exit codes of every ``gateway`` command (PROTOCOL §9), in one place.

§9 gives ``eod check`` three: 0 valid and reconciled, 3 valid with discrepancies,
2 rejected.  So 2 cannot also mean "you typed the command wrong", as it does for
argparse: a script that files a day's clearing by exit code would read a typo as a
rejected file.  Usage errors therefore exit 64 (EX_USAGE of BSD's sysexits.h), in
every command alike (docs/operations.md, "Exit codes").
"""
from __future__ import annotations

EXIT_OK = 0
#: The command could not do its job: no key store, a journal that failed to commit, an
#: error in gateway.toml; ``eod check``: nothing was judged (no file at FILE, ...).
EXIT_FAILED = 1
#: ``eod check``: the file is rejected (§9).
EXIT_REJECTED = 2
#: ``eod check``: the file is valid, but it and the journal disagree (§9).
EXIT_DISCREPANCIES = 3
#: Bad arguments: an unknown option, a missing operand, a malformed value.
EXIT_USAGE = 64
#: Stopped by Ctrl-C (or SIGTERM, for ``eod check``) before it finished.
EXIT_INTERRUPTED = 130
