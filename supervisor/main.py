"""akita-supervisor: run one Akita Genesis node in the foreground.

    akita-supervisor -c etc/akita.ini            run the node; Ctrl-C or SIGTERM stops it
    akita-supervisor -c etc/akita.ini --check    validate and print the effective config

Exit codes: 0 stopped cleanly (or the config is valid), 1 could not start (e.g. another
supervisor holds the run directory), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from akita import config as config_mod
from akita import rundir
from akita.errors import AkitaError, ConfigError

log = logging.getLogger("supervisor")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PROG = "akita-supervisor"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one Akita Genesis node in the foreground: the supervisor starts the "
                    "workers named in [supervisor] workers, restarts them by their policy, and "
                    "serves the control socket and the event bus under run_dir. SIGTERM or "
                    "Ctrl-C stops the node cleanly; SIGHUP re-reads the config and restarts "
                    "only the workers whose settings changed.",
        epilog="Exit codes: 0 stopped cleanly or config valid, 1 cannot start (e.g. another "
               "supervisor runs on the same run_dir), 2 bad usage or config.")
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="the node's INI config file")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print the effective values as JSON, exit")
    return parser


def configure_logging(log_dir: Path, max_bytes: int, backups: int) -> None:
    """Log to stderr and to log_dir/supervisor.log (rotated by size)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s supervisor[%(process)d] %(name)s: "
                            "%(message)s")
    path = rundir.log_path(log_dir, rundir.SUPERVISOR_LOG)
    try:
        to_file = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                       backupCount=backups)
    except OSError as exc:
        raise AkitaError(f"cannot write {path}: {exc.strerror}") from None
    to_stderr = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    for handler in (to_stderr, to_file):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def prepare_dirs(config: config_mod.Config) -> None:
    """Create data_dir, log_dir and run_dir, each private to this user."""
    from akita import transport

    for path in (config.node.data_dir, config.node.log_dir, config.node.run_dir):
        try:
            transport.ensure_private_dir(path)
        except OSError as exc:
            raise AkitaError(f"cannot create {path}: {exc.strerror}") from None


def run(config: config_mod.Config) -> int:
    """Lock the run directory, start the zygote and the supervisor loop; returns the exit code."""
    # Imported here so that `--check` and `--help` stay quick and import nothing heavy.
    from akita import identity
    from supervisor.mainloop import Supervisor
    from supervisor.pidlock import PidLock
    from supervisor.systemd import SystemdNotifier
    from supervisor.table import zygote_preload
    from workers.zygote import Zygote

    prepare_dirs(config)
    lock = PidLock(config.node.run_dir)
    lock.acquire()
    try:
        configure_logging(config.node.log_dir, config.supervisor.log_max_bytes,
                          config.supervisor.log_backups)
        node_identity = identity.load_or_create(config.node.data_dir)
        log.info("supervisor pid %d, config %s", os.getpid(), config.path)
        # Before the zygote forks: it takes systemd's variables out of the environment.
        systemd = SystemdNotifier.from_environment()
        # The zygote first: it is forked before this process opens any socket.
        zygote = Zygote.start(zygote_preload())
        return Supervisor(config, node_identity, zygote, systemd).run()
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_mod.load(args.config)
        if args.check:
            print(json.dumps(config.effective(), indent=2))
            return EXIT_OK
        return run(config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AkitaError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        log.exception("supervisor failed")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
