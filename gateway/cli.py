"""``gateway [--home DIR] COMMAND …`` — the operations interface of PROTOCOL §9."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import connect_address, listen_address
from .exitcodes import (
    EXIT_DISCREPANCIES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
)
from .filemodes import UMASK

#: ``serve`` stopped because the journal could not be committed (not by a signal).
EXIT_JOURNAL_FAILED = EXIT_FAILED


class Home:
    """The gateway's home folder: ``keys/``, ``data/`` and ``gateway.toml``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def data(self) -> Path:
        return self.root / "data"


def _cmd_init(args: argparse.Namespace, home: Home) -> int:
    from .keystore import KeyStore, KeyStoreExists

    try:  # the party id, names and every target file are checked before anything is written
        store = KeyStore.create(home.keys, party=args.party, sans=args.san)
    except (KeyStoreExists, ValueError, OSError) as exc:
        print(f"gateway init: refused: {exc}", file=sys.stderr)
        return 1
    home.data.mkdir(parents=True, exist_ok=True)
    from .certificates import gateway_names
    from .opsconfig import TOKEN_FILE, make_token

    make_token(home.keys)  # §10: the ops API's bearer token, 0600

    print(f"initialised gateway {store.party} in {home.root}")
    print(f"signer {store.signer().signer}; certificate {home.keys / 'gateway.crt'} "
          f"naming {', '.join(gateway_names(store))}")
    print(f"ops token (for the ops page and `gateway status`) in {home.keys / TOKEN_FILE}")
    return EXIT_OK


def _cmd_csr(args: argparse.Namespace, home: Home) -> int:
    from .certificates import signing_request

    try:
        pem = signing_request(_open_store(home), args.san)
    except ValueError as exc:
        print(f"gateway csr: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _emit(pem, args.out, "certificate signing request")


def _emit(pem: bytes, out: Path | None, what: str) -> int:
    """PEM to ``out`` (a new file) or to stdout."""
    if out is None:
        sys.stdout.write(pem.decode("ascii"))
        return EXIT_OK
    try:
        with open(out, "xb") as f:
            f.write(pem)
    except OSError as exc:
        print(f"gateway: cannot write the {what}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote the {what} to {out}")
    return EXIT_OK


def _cmd_cert_install(args: argparse.Namespace, home: Home) -> int:
    from .certificates import install_certificate

    try:
        done = install_certificate(_open_store(home), Path(args.install).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"gateway cert --install: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"installed {done.subject} issued by {done.issuer}, valid until "
          f"{done.not_after:%Y-%m-%d}, naming {', '.join(done.names) or 'nothing'}"
          + (f", with {done.intermediates} intermediate(s)" if done.intermediates else ""))
    print(f"the previous certificate is kept as {done.backup}; the key (and signer) is "
          "unchanged: restart `gateway serve` to present it")
    for warning in done.warnings:
        print(f"gateway cert --install: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _cmd_peer_issue(args: argparse.Namespace, home: Home) -> int:
    from .certificates import issue_peer_certificate

    try:
        pem = issue_peer_certificate(_open_store(home), args.id, args.san)
    except ValueError as exc:
        print(f"gateway peer issue: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _emit(pem, args.out, f"dev-CA certificate for {args.id}'s registered key")


def _open_store(home: Home):  # type: ignore[no-untyped-def]
    from .keystore import KeyStore

    return KeyStore(home.keys)


def _cmd_cert(args: argparse.Namespace, home: Home) -> int:
    if args.install is not None:
        return _cmd_cert_install(args, home)
    from . import rotation

    store = _open_store(home)
    try:
        if args.letter:
            text = rotation.own_letter(store, next_key=args.next)
        else:
            text = (rotation.next_certificate_pem(store) if args.next
                    else store.certificate_pem()).decode("ascii")
    except ValueError as exc:
        return _refused("cert", exc)
    sys.stdout.write(text)
    return EXIT_OK


def _refused(command: str, exc: BaseException) -> int:
    """One line on stderr saying why and what to do; exit 1."""
    print(f"gateway {command}: refused: {exc}", file=sys.stderr)
    return EXIT_FAILED


#: What the running gateway does with a peer change (PROTOCOL §9).
_WITHIN = "the running gateway closes its sessions within 1 s"


def _cmd_peer_add(args: argparse.Namespace, home: Home) -> int:
    if args.role is None and not args.next:
        args.parser.error("--role is required (but with --next, which keeps the role)")
    store = _open_store(home)
    try:
        pem = Path(args.cert).read_bytes()
        before = store.peer(args.id)
        if args.next:
            if args.connect is not None or args.no_connect:
                raise ValueError("--connect/--no-connect cannot go with --next (a next key "
                                 "keeps the address); change it without --next")
            peer = store.add_next_key(args.id, pem, args.role, replace=args.replace)
        else:
            peer = store.add_peer(args.id, args.role, pem, connect=args.connect,
                                  replace=args.replace, no_connect=args.no_connect)
    except (OSError, ValueError) as exc:
        return _refused("peer add", exc)
    if args.next:
        assert peer.next_key is not None
        print(f"next key for {peer.party}: signer {peer.next_key.signer} "
              f"({peer.next_key.key_type}) beside the current {peer.signer}; both verify "
              f"until `gateway peer promote --id {peer.party}`")
    elif before is None:
        print(f"registered {peer.party} {peer.role} {peer.key_type} signer {peer.signer}"
              + (f" connect {peer.connect}" if peer.connect else ""))
    else:
        _print_change(before, peer)
    others = [p for p in store.parties_with_key(peer.next_key.signer if args.next and
                                                 peer.next_key else peer.signer)
              if p != peer.party]
    if others:
        print(f"gateway peer add: warning: the same key is also registered for "
              f"{', '.join(others)}", file=sys.stderr)
    return EXIT_OK


def _print_change(before: Any, after: Any) -> None:
    """``peer add`` of a registered party: the old and new signer and role."""
    if (before.signer, before.role) == (after.signer, after.role):
        print(f"{after.party} unchanged: {after.role} signer {after.signer}"
              + (f"; connect {before.connect or '-'} -> {after.connect or '-'}"
                 if before.connect != after.connect else ""))
        return
    print(f"replaced {after.party}: old signer {before.signer} role {before.role} -> "
          f"new signer {after.signer} role {after.role}")
    print(f"sessions logged on with signer {before.signer} are no longer accepted; "
          f"{_WITHIN}")


def _cmd_peer_list(args: argparse.Namespace, home: Home) -> int:
    store = _open_store(home)
    if args.letter:
        try:
            sys.stdout.write(store.peer_letters(args.letter))
        except ValueError as exc:
            return _refused("peer list", exc)
        return EXIT_OK
    try:
        peers = store.peers()
    except ValueError as exc:  # e.g. the registry in PostgreSQL is unreachable (§12)
        return _refused("peer list", exc)
    print(f"{'PARTY':<12} {'ROLE':<7} {'KEY':<8} {'SIGNER':<16}  {'CONNECT':<21} "
          f"{'STATE':<8} NEXT")
    for p in peers:
        print(f"{p.party:<12} {p.role:<7} {p.key_type:<8} {p.signer:<16}  "
              f"{p.connect or '-':<21} {'enabled' if p.enabled else 'DISABLED':<8} "
              f"{p.next_key.signer if p.next_key else '-'}")
    return EXIT_OK


def _cmd_peer_promote(args: argparse.Namespace, home: Home) -> int:
    store = _open_store(home)
    try:
        before = store.peer(args.id)
        peer = store.promote_peer(args.id)
    except (OSError, ValueError) as exc:
        return _refused("peer promote", exc)
    old = before.signer if before is not None else "?"
    print(f"promoted {peer.party}: signer {peer.signer} is its only key now (was {old}); "
          f"sessions logged on with {old} are no longer accepted; {_WITHIN}")
    return EXIT_OK


def _cmd_peer_state(args: argparse.Namespace, home: Home) -> int:
    """``peer disable|enable|remove``."""
    store, action = _open_store(home), args.peer_command
    try:
        if action == "remove":
            peer = store.remove_peer(args.id)
        else:
            before = store.peer(args.id)
            peer = store.set_peer_enabled(args.id, action == "enable")
            if before is not None and before.enabled == peer.enabled:
                print(f"{peer.party} was already {action}d")
                return EXIT_OK
    except (OSError, ValueError) as exc:
        return _refused(f"peer {action}", exc)
    if action == "disable":
        print(f"disabled {peer.party}: its logons are refused (E203) until `gateway peer "
              f"enable --id {peer.party}`; {_WITHIN}")
    elif action == "enable":
        print(f"enabled {peer.party}: it may log on again")
    else:
        print(f"removed {peer.party} ({peer.role}, signer {peer.signer}); its journal rows "
              f"are kept, its keys in keys/peers/retired/; {_WITHIN}")
    return EXIT_OK


def _cmd_key_rotate(args: argparse.Namespace, home: Home) -> int:
    from . import rotation

    store = _open_store(home)
    try:
        nxt = rotation.rotate(store, args.type, replace=args.replace)
    except (OSError, ValueError) as exc:
        return _refused("key rotate", exc)
    print(f"next signing key made: signer {nxt.signer} ({nxt.alg}); the gateway still "
          f"signs with {store.signer().signer}")
    print("1. send `gateway cert --next` and its key letter (`gateway cert --next --letter`) "
          "to every bank and broker, to register as the gateway's next key")
    print("2. then run `gateway key promote`: the running gateway signs with it within 1 s")
    return EXIT_OK


def _cmd_key_promote(args: argparse.Namespace, home: Home) -> int:
    from . import rotation

    store = _open_store(home)
    try:
        old, new = rotation.promote(store)
    except (OSError, ValueError) as exc:
        return _refused("key promote", exc)
    print(f"promoted: the gateway signs as {new} from now on (was {old}); the running "
          "gateway takes it within 1 s; the old certificate is kept in keys/retired/, the "
          "storage key is unchanged")
    return EXIT_OK


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """stderr, ``--log-format`` text or json, Twisted's events included (logsetup.py)."""
    from .logsetup import configure

    configure(log_format, level)


def _cmd_serve(args: argparse.Namespace, home: Home) -> int:
    from twisted.internet import reactor as the_reactor

    reactor: Any = the_reactor  # the global reactor: IReactorCore, IReactorTCP, … at once

    from . import config as config_mod
    from .alertrules import load_settings
    from .server import GatewayService

    setup_logging(args.log_format)
    try:
        cfg = config_mod.with_key_store_party(config_mod.load(home.root),
                                              _key_store_party(home.root / "keys"))
        alerts = load_settings(home.root)  # [alerts]: a bad value is one line, exit 1
    except config_mod.ConfigError as exc:
        print(f"gateway serve: {exc}", file=sys.stderr)
        return 1
    ops = _ops_settings(args, home)
    if ops is None:
        return EXIT_FAILED
    from .standing import StoreUnavailable as PairUnavailable
    from .store.interfaces import StoreUnavailable

    try:
        svc = GatewayService(home.root, cfg, reactor, listen=args.listen,
                             tls=True if args.tls else None, alerts=alerts, ops=ops)
    except (StoreUnavailable, PairUnavailable) as exc:  # §12: the PostgreSQL of [journal] url
        print(f"gateway serve: could not start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    flushes = FlushWatch(svc.gateway)
    refused: list[Exception] = []

    def start() -> None:
        from twisted.internet.error import CannotListenError

        try:
            svc.startService()
        except Exception as exc:
            if not isinstance(exc, CannotListenError):  # the port taken, the host unknown:
                # one line says it all; anything else is a bug and keeps its traceback
                logging.getLogger("gateway.serve").exception("the gateway could not start")
            refused.append(exc)
            reactor.stop()

    # SIGHUP reloads gateway.toml's [alerts] table; sessions stay (§9)
    signal.signal(signal.SIGHUP,
                  lambda signum, frame: reactor.callFromThread(svc.reload_alerts))
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()
    if refused:
        print(f"gateway serve: could not start: {refused[0]}", file=sys.stderr)
        return EXIT_FAILED
    if flushes.failed:
        print("gateway serve: stopped because the journal could not be committed "
              "(see the log)", file=sys.stderr)
        return EXIT_JOURNAL_FAILED
    return EXIT_OK


def _ops_settings(args: argparse.Namespace, home: Home) -> Any:
    """``[ops]`` (with ``--ops-listen``), and keys/ops.token made if missing (§10);
    None after one line on stderr if either is unusable."""
    from . import opsconfig
    from .config import ConfigError

    try:
        ops = opsconfig.load(home.root).with_listen(args.ops_listen)
        if ops.enabled and opsconfig.make_token(home.keys):
            logging.getLogger("gateway.serve").warning(
                "made the ops token %s (it was missing; 0600)", home.keys / opsconfig.TOKEN_FILE)
        if ops.enabled:
            opsconfig.read_token(home.keys)
    except (ConfigError, opsconfig.TokenError, OSError) as exc:
        print(f"gateway serve: {exc}", file=sys.stderr)
        return None
    return ops


def _cmd_status(args: argparse.Namespace, home: Home) -> int:
    from .opsclient import StatusError, fetch_status, summary

    try:
        status = fetch_status(home.root)
    except StatusError as exc:
        print(f"gateway status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        import json

        print(json.dumps(status, ensure_ascii=False, indent=1))
    else:
        print(summary(status))
    return EXIT_OK


class FlushWatch:
    """Notes whether a journal flush of ``gateway`` failed.

    The server stops the reactor when a flush fails, the same way SIGTERM does; this
    lets ``serve`` tell the two apart and exit non-zero after the first.  It wraps the
    node's public ``flush`` (every caller goes through the instance attribute)."""

    def __init__(self, gateway: Any) -> None:
        self.failed = False
        self._flush: Callable[[bool], int] = gateway.flush
        gateway.flush = self

    def __call__(self, background: bool = False) -> int:
        try:
            return self._flush(background)
        except Exception:
            self.failed = True
            raise


def _key_store_party(keys_dir: Path) -> str | None:
    from .keystore import KeyStore

    try:
        return KeyStore(keys_dir).party
    except (OSError, ValueError, KeyError):
        return None  # no key store yet: serve reports that itself


def _cmd_sim(args: argparse.Namespace, home: Home) -> int:
    """A reference bank or broker that dials the gateway and serves until stopped (a
    driving broker: until its script/load is done); gateway/sim/process.py."""
    from .sim import process

    setup_logging(args.log_format)
    return process.run(args, home.root, args.gateway_cert or home.keys / "gateway.crt")


def _cmd_demo(args: argparse.Namespace, home: Home) -> int:
    from .demo import main as demo_main

    setup_logging(args.log_format, logging.WARNING)
    return demo_main(args.keep, tls=args.tls)


def _cmd_eod_check(args: argparse.Namespace, home: Home) -> int:
    from .eod import check_command

    return check_command(home.root, args.file, args.json)


def _cmd_eod_export(args: argparse.Namespace, home: Home) -> int:
    from .eod import export_command

    return export_command(home.root, args.date, args.type, args.to, args.out, force=args.force)


def _cmd_eod_watch(args: argparse.Namespace, home: Home) -> int:
    from .eod import watch_command

    setup_logging(args.log_format)
    return watch_command(home.root, args.dir, poll_seconds=args.poll, once=args.once,
                         replace=args.replace)


def _ops_listen_address(text: str) -> str:
    """``--ops-listen``: HOST:PORT (port 0: any free one), or "" for no endpoint."""
    return text if text == "" else listen_address(text)


def _cmd_journal_show(args: argparse.Namespace, home: Home) -> int:
    from .journalshow import show_command
    from .keystore import KeyStoreMissing

    try:  # the gateway's PartyId tells its own reversal attempts from relayed ones
        party = _key_store_party(home.keys)
    except KeyStoreMissing:
        party = None
    return show_command(home.root, args.biz_sn, args.origin, args.json, gateway=party)


def _cmd_exit_report(args: argparse.Namespace, home: Home) -> int:
    from .exitreport import exit_report_command

    return exit_report_command(home.root, args.party, args.json, args.eod_dir)


def _cmd_archive(args: argparse.Namespace, home: Home) -> int:
    from .archive import archive_command, verify_command

    if args.archive_command == "verify":
        return verify_command(args.dir, args.cert)
    if args.out is None:
        args.archive_parser.error("give --out DIR (a new or empty folder), or: verify DIR")
    return archive_command(home.root, args.out, with_journal=not args.without_journal)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: the one its text names, else the
    value argparse has (a flag's: off).  A description or epilog written in lines
    keeps them; one written as one paragraph is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or action.required or "default" in text
                or action.default is argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # store_true and friends
            return f"{text} (default: off)"
        if action.default is None or action.default == []:
            return text  # "None" says nothing: the text names what happens without it
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64, not 2 (gateway.exitcodes says why), and
    help shows defaults; the subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


#: ``gateway --help``'s epilog: the exit codes of every command (gateway/exitcodes.py,
#: docs/operations.md "Exit codes").
EXIT_CODES_HELP = f"""\
exit codes (every command):
  {EXIT_OK:<4} done (eod check: the file is valid and reconciled)
  {EXIT_FAILED:<4} the command could not do its job: no key store, a journal that failed to
       commit, an error in gateway.toml, serve that cannot listen, no such record;
       eod check: nothing was judged (no file at FILE, a journal too old or
       unreachable); eod export: the file is already there (--force), or the journal
       unreachable; eod watch: another watcher holds the folder, or (--once) the
       folder could not be sorted or the journal not read
  {EXIT_REJECTED:<4} eod check: the file is rejected; eod watch --once: a file was rejected;
       archive verify: the archive does not hold (a file missing, changed or extra,
       or a bad signature)
  {EXIT_DISCREPANCIES:<4} eod check: the file is valid, with discrepancies against the journal;
       eod watch --once: a file had discrepancies (none rejected);
       exit-report: something keeps a client from leaving
  {EXIT_USAGE:<4} usage error: an unknown option or command, a missing operand, a malformed
       value, --home or --log-format after the command
  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C) before it finished; serve, sim and eod watch stop
       in order on SIGINT/SIGTERM and exit 0
"""

#: Options of ``gateway`` itself: they go before the command.
GLOBAL_OPTIONS = {"--home": "DIR", "--log-format": "text|json"}


def misplaced_global_option(argv: Sequence[str]) -> tuple[str, str] | None:
    """(option, command) when a global option comes after the command."""
    command, skip = None, False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif command is None and name in GLOBAL_OPTIONS:
            skip = "=" not in arg
        elif command is None and not arg.startswith("-"):
            command = arg
        elif command is not None and name in GLOBAL_OPTIONS:
            return name, command
        elif arg == "--":
            return None
    return None


def _seconds(text: str) -> float:
    """argparse ``type`` of a duration: a plain number of seconds, 0.01 or more."""
    try:
        value = float(text) if text.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.01 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0.01 or more)")
    return value


def _add_cert_and_key_commands(sub: Any) -> None:
    p = sub.add_parser("cert", help="print the gateway certificate (PEM) or its key letter",
                       description="Print the gateway's certificate (PEM), for peers to "
                       "register, or its key letter, to confirm out of band.")
    p.add_argument("--next", action="store_true",
                   help="the next key's (made by `key rotate`) instead of the current one's")
    p.add_argument("--letter", action="store_true",
                   help="print the key letter (party, role, key type, full SHA-256 "
                   "fingerprint, date) instead of the PEM")
    p.add_argument("--install", type=Path, metavar="FILE",
                   help="install FILE (PEM, intermediates after the certificate) as the "
                        "gateway certificate: it must be for keys/gateway.key and chain to "
                        "keys/ca.crt or a root in keys/trust/ (default: print the current "
                        "certificate instead)")
    p.set_defaults(run=_cmd_cert)

    p = sub.add_parser("csr", help="a certificate signing request for the gateway's key")
    p.add_argument("--san", nargs="+", default=[], metavar="NAME",
                   help="DNS names and IP addresses to ask for (default: those of the "
                        "current certificate)")
    p.add_argument("--out", type=Path, metavar="FILE", help="a new file (default: stdout)")
    p.set_defaults(run=_cmd_csr)

    key = sub.add_parser("key", help="rotate the gateway's own signing key").add_subparsers(
        dest="key_command", metavar="SUBCOMMAND")
    key.required = True
    p = key.add_parser("rotate", help="make the next signing key and certificate",
                       description="Make the gateway's next signing key and its certificate "
                       "(keys/gateway.next.key, .crt); the current key keeps signing until "
                       "`gateway key promote`. The storage key is never replaced.")
    p.add_argument("--type", default="ES256", choices=["ES256", "ED25519", "PS256", "RS256"],
                   help="key type (default: ES256)")
    p.add_argument("--replace", action="store_true",
                   help="make another next key in place of one already waiting "
                   "(default: refuse)")
    p.set_defaults(run=_cmd_key_rotate)
    p = key.add_parser("promote", help="sign with the next key from now on",
                       description="Make the next key the signing key; a running gateway "
                       "signs with it within 1 s. The old certificate goes to keys/retired/.")
    p.set_defaults(run=_cmd_key_promote)


def _add_peer_commands(sub: Any) -> None:
    peer = sub.add_parser("peer", help="register, list, re-key, disable and remove peers"
                          ).add_subparsers(dest="peer_command", metavar="SUBCOMMAND")
    peer.required = True
    p = peer.add_parser(
        "add", help="register a peer certificate or public key",
        description="Register a bank's or broker's certificate or public key (PEM). "
        "Changing a registered party's key or role needs --replace; --next registers a "
        "next key beside the current one. A running gateway applies it within 1 s.")
    p.add_argument("--id", required=True, help="the peer's PartyId ([A-Z0-9]{2,12})")
    p.add_argument("--role", choices=["BANK", "BROKER"],
                   help="BANK or BROKER (required; with --next the default is the "
                        "registered role)")
    p.add_argument("--cert", required=True, help="PEM certificate or public key file")
    connect = p.add_mutually_exclusive_group()
    connect.add_argument("--connect", metavar="HOST:PORT[,HOST:PORT…]", type=connect_address,
                         help="the gateway dials the peer there; a comma-separated list is "
                         "tried in turn (default: a new peer dials in; a registered one "
                         "keeps its address)")
    connect.add_argument("--no-connect", action="store_true",
                         help="drop a registered peer's connect address: it dials in")
    p.add_argument("--replace", action="store_true",
                   help="change the key or role of a registered party, closing the sessions "
                   "of its old key (default: refuse)")
    p.add_argument("--next", action="store_true",
                   help="register the party's next key: both verify until `peer promote`")
    p.set_defaults(run=_cmd_peer_add, parser=p)
    p = peer.add_parser("list", help="peers, roles, key fingerprints, state, next keys",
                        description="List the registered peers, or print one's key letters.")
    p.add_argument("--letter", metavar="ID",
                   help="print the key letters (current and next key) of peer ID instead "
                        "(default: list every peer)")
    p.set_defaults(run=_cmd_peer_list)
    p = peer.add_parser("promote", help="make a peer's next key its only key",
                        description="The next key becomes the only one; sessions logged on "
                        "with the old key are closed within 1 s.")
    p.add_argument("--id", required=True, help="the peer's PartyId")
    p.set_defaults(run=_cmd_peer_promote)
    for action, text in (("disable", "close its sessions within 1 s and refuse its logons "
                                     "(E203) until enabled"),
                         ("enable", "let a disabled peer log on again"),
                         ("remove", "forget the peer (its journal rows stay); its sessions "
                                    "are closed within 1 s")):
        p = peer.add_parser(action, help=text, description=f"{action.capitalize()} a peer: "
                            f"{text}.")
        p.add_argument("--id", required=True, help="the peer's PartyId")
        p.set_defaults(run=_cmd_peer_state)
    p = peer.add_parser("issue", help="a dev-CA TLS certificate for a peer's registered key")
    p.add_argument("--id", required=True, help="the peer's PartyId")
    p.add_argument("--san", nargs="+", default=[], metavar="NAME",
                   help="names for it, if the gateway dials the peer (default: none)")
    p.add_argument("--out", type=Path, metavar="FILE", help="a new file (default: stdout)")
    p.set_defaults(run=_cmd_peer_issue)


def _add_journal_commands(sub: Any) -> None:
    journal = sub.add_parser("journal", help="read the journal").add_subparsers(
        dest="journal_command", metavar="SUBCOMMAND")
    journal.required = True
    p = journal.add_parser(
        "show", help="one business record and its messages, PII masked",
        description="Show the business record(s) with BIZSN from the journal: type, "
        "parties, state, result, amounts, give-backs, the gateway's reversal, and the "
        "messages (request and answer, as received and as relayed). CustName, IdNo and "
        "Phone are never shown (nor decrypted); FundAcct and WalletId only by their last "
        "4 characters. Reads the journal only: safe beside a running gateway. Exit 1 "
        "when there is no such record.")
    p.add_argument("biz_sn", metavar="BIZSN", help="the business serial (Body/BizSn)")
    p.add_argument("--from", dest="origin", metavar="PARTY",
                   help="only the record PARTY originated (default: every record with "
                        "that BizSn)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {biz_sn, records: [...]} instead of text")
    p.set_defaults(run=_cmd_journal_show)


def _add_archive_commands(sub: Any) -> None:
    p = sub.add_parser(
        "archive", help="technical exit: a signed copy of journal, config and public keys",
        description="Write DIR: a consistent copy of the journal (and of the evidence "
        "moved to data/archive/), gateway.toml, the certificates and the peers' public "
        "keys (never a private key), and MANIFEST (sha256sum lines) with MANIFEST.sig, "
        "the gateway key's signature (PROTOCOL §8, §11). Safe while the gateway serves. "
        "Exit 1 if it cannot be written (DIR not empty, no key store, no journal, a "
        "PostgreSQL journal without --without-journal).")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="a new or empty folder to write the archive into (made 0700); "
                        "required unless the subcommand is verify (default: none: "
                        "without it, a usage error)")
    p.add_argument("--without-journal", action="store_true",
                   help="leave the journal and its month files out: the configuration "
                        "and public keys only (a PostgreSQL journal: dump it with pg_dump)")
    p.set_defaults(run=_cmd_archive, archive_command=None, archive_parser=p)
    verbs = p.add_subparsers(dest="archive_command", metavar="SUBCOMMAND")
    v = verbs.add_parser(
        "verify", help="check an archive: files against MANIFEST, MANIFEST against its "
                       "signature",
        description="Check the archive in DIR: every file MANIFEST lists is there with "
        "its SHA-256, no file is there that it does not list, and MANIFEST.sig verifies. "
        "Exit 0 if so; 2 otherwise, each problem named (missing, changed, extra file, "
        "bad signature).")
    v.add_argument("dir", type=Path, metavar="DIR", help="the archive folder")
    v.add_argument("--cert", type=Path, metavar="FILE",
                   help="check the signature with this certificate or public key (PEM) "
                        "instead of the archive's own keys/gateway.crt (default: DIR/keys/"
                        "gateway.crt; its fingerprint is printed: compare it with the one "
                        "you know)")
    v.set_defaults(run=_cmd_archive)


def _cmd_suspend(args: argparse.Namespace, home: Home) -> int:
    from .opsclient import change_command

    return change_command(home.root, args.command, args.party,
                          getattr(args, "reason", None), args.json)


def _cmd_backup(args: argparse.Namespace, home: Home) -> int:
    from .backup import backup_command

    return backup_command(home.root, args.out)


def _add_suspend_commands(sub: Any) -> None:
    """§11 ``suspend`` / ``resume``, through the running gateway's ops API."""
    p = sub.add_parser(
        "suspend", help="refuse new business (B340) with a party or every party (§11)",
        description="Ask the running gateway (its ops API, like `gateway status`) to "
        "refuse with B340 the requests that bring new business with PARTY (CTS.SIGN, "
        "XFER.IN, PAY.ORDER, OTC.SUBSCRIBE, whether PARTY sends or receives them); "
        "unsigning, withdrawals, reversals, refunds, redemptions and queries still flow. "
        "Kept in the journal across restarts until `gateway resume`. Exit 0 done (also "
        "when it already was), 1 when the gateway is not running or refused it.")
    p.add_argument("--party", metavar="P", help="the bank or broker (default: every party)")
    p.add_argument("--reason", metavar="TEXT",
                   help="why, one line (shown in status, logs and B340's text) "
                        "(default: none)")
    p.add_argument("--json", action="store_true",
                   help="print the ops API's JSON answer instead of text")
    p.set_defaults(run=_cmd_suspend)
    p = sub.add_parser(
        "resume", help="lift a suspension (§11)",
        description="Ask the running gateway to lift the suspension of PARTY, or every "
        "suspension. `resume --party P` while every party is suspended resumes P alone: "
        "the every-party suspension becomes one per other registered party "
        "(docs/operations.md). Exit 0 done (also when nothing was suspended), 1 when the "
        "gateway is not running or refused it.")
    p.add_argument("--party", metavar="P",
                   help="the bank or broker (default: every suspension is lifted)")
    p.add_argument("--json", action="store_true",
                   help="print the ops API's JSON answer instead of text")
    p.set_defaults(run=_cmd_suspend)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gateway",
        description="SBDX/1 securities-bank e-CNY message-exchange gateway.\n"
                    "The options below go before the COMMAND (`gateway --home DIR serve`);\n"
                    "`gateway COMMAND --help` shows the command's own.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("--home", type=Path, default=Path.cwd(), metavar="DIR",
                        help="gateway home (keys/, data/, gateway.toml) (default: the "
                             "current directory)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines on stderr: text (time LEVEL logger: message) or "
                             "json (one object a line: time, level, logger, message); "
                             "docs/operations.md \"Logs\"")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("init", help="create the gateway's keys, certificate and dev CA")
    p.add_argument("--party", default="GW01", metavar="ID",
                   help="the gateway's own PartyId ([A-Z0-9]{2,12})")
    p.add_argument("--san", nargs="+", default=[], metavar="NAME",
                   help="DNS names and IP addresses peers dial the gateway by, named in its "
                        "certificate besides localhost and 127.0.0.1 (default: only those)")
    p.set_defaults(run=_cmd_init)

    _add_cert_and_key_commands(sub)
    _add_peer_commands(sub)
    _add_journal_commands(sub)
    _add_archive_commands(sub)

    p = sub.add_parser("serve", help="run the gateway until SIGTERM/SIGINT",
                       description="Run the gateway until SIGTERM/SIGINT (then it drains "
                       "and exits 0); SIGHUP reloads gateway.toml's [alerts].")
    p.add_argument("--listen", metavar="HOST:PORT", type=listen_address,
                   help="address to listen on, port 0 for any free port; IPv6 as "
                        "[::1]:7700 (default: [gateway] listen of gateway.toml, else "
                        "127.0.0.1:7700)")
    p.add_argument("--tls", action="store_true",
                   help="every session, accepted or dialled, over mutual TLS (default: "
                        "[gateway] tls of gateway.toml, else off: plain TCP)")
    p.add_argument("--ops-listen", metavar="HOST:PORT", type=_ops_listen_address,
                   help="the ops HTTP endpoint (PROTOCOL §10) instead of [ops] listen "
                        "(default 127.0.0.1:7780); \"\" serves none")
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser(
        "exit-report", help="what keeps each agreement from being unsigned (PROTOCOL §11)",
        description="Every agreement in force with what keeps it from being unsigned now "
        "(records not final, queued reversals, paid services in validity, funds left: the "
        "latest checked BAL file plus the transfers since, else the journal's net "
        "transfers), the agreements that can be unsigned now, and per corporate wallet the "
        "subscriptions not yet redeemed. FundAcct and WalletIds show their last 4 "
        "characters. Reads the journal only: safe beside a running gateway. Exit 0 nothing "
        "blocks, 3 something does, 1 no journal or an unknown --party (docs/operations.md, "
        "\"Business exit\").")
    p.add_argument("--party", metavar="P",
                   help="only agreements and subscriptions with counterparty P, a bank or a "
                        "broker (default: every party)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (its fields: docs/operations.md) instead of text")
    p.add_argument("--eod-dir", type=Path, action="append", metavar="DIR",
                   help="a `gateway eod watch` drop folder whose accepted/ BAL files give the "
                        "balances; repeatable (default: [ops] eod_dirs of gateway.toml)")
    p.set_defaults(run=_cmd_exit_report)

    p = sub.add_parser("status", help="ask the running gateway for its sessions, queues, "
                                      "today's totals and alerts (PROTOCOL §10)")
    p.add_argument("--json", action="store_true", help="the ops API's JSON as it is")
    p.set_defaults(run=_cmd_status)
    _add_suspend_commands(sub)
    p = sub.add_parser(
        "backup", help="a consistent copy of the journal, taken while the gateway serves",
        description="Copy the SQLite journal [journal] url names (default "
        "data/journal.sqlite3) into the new file FILE (0600) with "
        "SQLite's online backup, beside a running gateway or a stopped one: the journal "
        "as of one commit. The copy carries an every-party suspension (\"restored from "
        "backup taken at …\"): a gateway restored from it refuses new business (B340) "
        "until `gateway resume` (PROTOCOL §11; restore procedure in docs/operations.md "
        "\"Backup and restore\"). Exit 0 written, 1 not (FILE exists, no journal, the "
        "copy failed; nothing is left at FILE; a PostgreSQL journal: back it up with "
        "pg_dump or PostgreSQL's base backups and WAL archiving instead).")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the new file (relative to the current directory); never "
                        "replaced (default: none, required)")
    p.set_defaults(run=_cmd_backup)

    eod = sub.add_parser("eod", help="end-of-day clearing files").add_subparsers(
        dest="eod_command", metavar="SUBCOMMAND")
    eod.required = True
    p = eod.add_parser("check", help="check and reconcile one file",
                       description="Check one §8 file and reconcile it with the journal "
                       "[journal] url names in gateway.toml (default: sqlite:///data/"
                       "journal.sqlite3; a postgresql:// one too): exit 0 reconciled, 3 "
                       "discrepancies, 2 rejected, 1 nothing judged.")
    p.add_argument("file", type=Path, help="the end-of-day file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the text report")
    p.set_defaults(run=_cmd_eod_check)
    p = eod.add_parser("export", help="write a signed file from the journal",
                       description="Write <TYPE>_<GATEWAY>_<PARTY>_<YYYYMMDD>.txt and its .sig "
                       "from the final records of that trade date in the journal [journal] "
                       "url names (default: sqlite:///data/journal.sqlite3).  Refuses a "
                       "future date (exit 64) and a file already there (exit 1, see --force); "
                       "warns on stderr, exit 0, when the day is still open (today, or "
                       "records still PENDING/REVERSING: they are left out).")
    p.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the trade date")
    p.add_argument("--type", required=True, choices=["XFER", "SIGN", "PAY", "OTC"],
                   help="the file type (§8)")
    p.add_argument("--to", required=True, metavar="PARTY",
                   help="the counterparty the file is for")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder to write it into, created 0700 if missing (default: . , "
                        "the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace a file of that name (and its .sig) already in --out "
                        "(default: refuse, exit 1)")
    p.set_defaults(run=_cmd_eod_export)
    p = eod.add_parser("watch", help="check every complete file dropped into DIR",
                       description="Check every complete file (its .sig there) dropped into "
                       "DIR and move it, with its .sig and a report, into DIR/accepted or "
                       "DIR/rejected.  Runs until SIGTERM/SIGINT (exit 0), or one pass with "
                       "--once.  One watcher per folder (a second exits 1).  Reconciles "
                       "against the journal [journal] url names (default: sqlite:///data/"
                       "journal.sqlite3); one it cannot read judges nothing that pass.")
    p.add_argument("dir", type=Path, help="the drop folder")
    p.add_argument("--poll", type=_seconds, default=1.0, metavar="S",
                   help="seconds between folder scans (default 1)")
    p.add_argument("--once", action="store_true",
                   help="one pass, then exit: 0 every file accepted and reconciled (or "
                        "none), 3 one accepted with discrepancies, 2 one rejected, 1 the "
                        "folder could not be sorted (default: run until stopped)")
    p.add_argument("--replace", action="store_true",
                   help="a valid file of a name already accepted (a corrected file for that "
                        "day) takes the accepted one's place, which is kept in "
                        "DIR/accepted/superseded/ (default: such a file is rejected as a "
                        "duplicate)")
    p.set_defaults(run=_cmd_eod_watch)

    from .sim import process as sim_process  # options only: no Twisted imported here

    sim = sub.add_parser("sim", help="reference bank/broker peers").add_subparsers(
        dest="sim_command", metavar="ROLE")
    sim.required = True
    for role in ("bank", "broker"):
        p = sim.add_parser(role, help=f"simulated {role} (keys and ledger under --home)")
        sim_process.add_arguments(p, role)
        p.set_defaults(run=_cmd_sim)

    p = sub.add_parser("demo", help="gateway + simulated bank and broker, a business day")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="run in DIR and keep it (default: a temporary folder, removed)")
    p.add_argument("--tls", action="store_true",
                   help="every session over mutual TLS (default: plain TCP)")
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = sys.argv[1:] if argv is None else list(argv)
    misplaced = misplaced_global_option(given)
    if misplaced is not None:
        option, command = misplaced
        parser.error(f"{option} goes before the command: gateway {option} "
                     f"{GLOBAL_OPTIONS[option]} {command} …")
    args = parser.parse_args(given)
    home = Home(args.home.resolve())
    umask = os.umask(UMASK)  # whatever a command creates is owner-only (§9, filemodes.py)
    try:
        return int(args.run(args, home))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a clear line for the operator, never a traceback dump
        from .keystore import KeyStoreMissing

        if isinstance(exc, KeyStoreMissing):
            print(f"gateway: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise
    finally:
        os.umask(umask)  # main() called in-process (tests) leaves the caller's umask


if __name__ == "__main__":
    sys.exit(main())
