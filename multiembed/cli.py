"""`multiembed`: the command line. Exit 0 on success, 2 for a usage, config or input error, 1 for a failure,
130 when interrupted (Ctrl-C), 143 when stopped by SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import get_args

from flows.memory import steady_heap
from schemas.config import ConfigError, RunnerConfig, RunnerKind, load_config
from tasks.embedders.base import ModelLoadError
from tasks.sources import InputError

USAGE_ERRORS = (ConfigError, InputError, ModelLoadError)
EXIT_SIGTERM = 128 + signal.SIGTERM  # a shell's exit status for a process SIGTERM ended: 143


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt (of which it is one), so that a stop by
    a scheduler (systemd, Kubernetes, `timeout`) takes Ctrl-C's way out: Prefect marks the run crashed, context
    managers close, and the exit hooks run, which stop the temporary Prefect server."""


@contextmanager
def _sigterm_stops() -> Iterator[threading.Event]:
    """While inside, SIGTERM raises `Stopped`; yields an event set once one came, which tells a stop apart even
    where the exception was caught or replaced on its way out (a second SIGTERM during the cleanup is raised
    again). The previous handler comes back on leaving: `main` is also called in-process, by tests."""
    received = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        received.set()
        raise Stopped(f"stopped by {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread, where signals cannot be handled: SIGTERM keeps its handler
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _database(args: argparse.Namespace) -> str:
    """The database of the config named on the command line (a ConfigError if the config is bad)."""
    return load_config(args.config).database


def _check_sources(args: argparse.Namespace) -> RunnerConfig:
    """Fail fast on a bad config, source name or runner, before Prefect starts; the runner to run on."""
    settings = load_config(args.config)
    if args.source:
        settings.source(args.source)
    return settings.runner.overridden(args.runner, args.address)


def _runs_flows(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """`run` under the Prefect settings for flows started from this process (`flows.settings`)."""

    def wrapped(args: argparse.Namespace) -> None:
        from flows.settings import run_settings

        with run_settings():
            run(args)

    return wrapped


@_runs_flows
def _backfill(args: argparse.Namespace) -> None:
    runner = _check_sources(args)
    from flows.backfill import backfill
    from flows.runners import with_runner

    with_runner(backfill, runner)(config=str(args.config), source=args.source, full=args.full, refit=args.refit)


@_runs_flows
def _refresh(args: argparse.Namespace) -> None:
    runner = _check_sources(args)
    from flows.backfill import refresh
    from flows.runners import with_runner

    with_runner(refresh, runner)(config=str(args.config), source=args.source)


def _versions(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_versions

    print_versions(_database(args), args.table)


def _show(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_table

    print_table(_database(args), args.table, args.as_of, args.limit)


def _restore(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_restore

    print_restore(_database(args), args.table, args.version)


def _compact(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_compact

    print_compact(_database(args), args.retention, args.table)


def _quality(stage: str) -> Callable[[argparse.Namespace], None]:
    """Run one quality stage (evaluate, bias, drift) as a flow and print its metrics."""

    @_runs_flows
    def run(args: argparse.Namespace) -> None:
        load_config(args.config)
        from flows.quality import print_metrics, quality

        rows = quality(config=str(args.config), stages=[stage], source=args.source, table=args.table,
                       as_of=args.as_of, reference=getattr(args, "reference", None))
        print_metrics(rows)

    return run


def _dashboard(args: argparse.Namespace) -> None:
    from multiembed.dashboard import print_dashboard

    print_dashboard(load_config(args.config), args.out, args.serve, args.port)


def _export(args: argparse.Namespace) -> None:
    from multiembed.export import print_export

    print_export(_database(args), args.out)


def _serve(args: argparse.Namespace) -> None:
    load_config(args.config)  # fail fast on a bad config, before Prefect and the flows are imported
    from deployments.serve import serve_config

    serve_config(args.config)


@_runs_flows
def _demo(args: argparse.Namespace) -> None:
    from multiembed.demo import run_demo

    run_demo(args.dir)


def _command(sub: argparse._SubParsersAction, name: str, summary: str,
             run: Callable[[argparse.Namespace], None], config: bool = True) -> argparse.ArgumentParser:
    """A subcommand that runs `run(args)`; most take the config file as their first argument."""
    command = sub.add_parser(name, help=summary, description=summary)
    if config:
        command.add_argument("config", help="path of the pipeline config (YAML)")
    command.set_defaults(run=run)
    return command


def _runner_flags(command: argparse.ArgumentParser) -> None:
    """--runner and --address: run the shards on a Ray or Dask cluster instead of in this process."""
    command.add_argument("--runner", choices=get_args(RunnerKind),
                         help="where the shards run: local (this process), ray or dask (default: the config's "
                              "runner.kind, else local); see docs/scaling.md")
    command.add_argument("--address", help="join the ray or dask cluster at this address (default: the config's "
                                           "runner.address, else start one on this machine for the run)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multiembed", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = _command(sub, "backfill", "make every table of the source(s) match its input; publish a version per "
                 "table that changed", _backfill)
    b.add_argument("--source", help="only this source (default: all)")
    _runner_flags(b)
    b.add_argument("--full", action="store_true", help="re-embed every row, even rows whose content is unchanged")
    b.add_argument("--refit", action="store_true",
                   help="fit the fitted embedders (tfidf, tabular) anew: their tables become a new generation")

    r = _command(sub, "refresh", "embed only new and changed rows, remove rows that left; publish if any changed",
                 _refresh)
    r.add_argument("--source", help="only this source (default: all)")
    _runner_flags(r)

    v = _command(sub, "versions", "list each table's versions with time, row count and tags", _versions)
    v.add_argument("--table", help="only this table")

    s = _command(sub, "show", "show a table at a version, tag or time: version, rows, model metadata, first rows",
                 _show)
    s.add_argument("table", help="table name (see `multiembed versions`)")
    s.add_argument("--as-of", metavar="V|TAG|TIME",
                   help="a version number, a tag (run-...) or an ISO 8601 time, UTC unless it has an offset: "
                        "the latest version at or before it (default: the latest version)")
    s.add_argument("--limit", type=int, default=5, metavar="N", help="rows to print (default: %(default)s)")

    rs = _command(sub, "restore", "make an earlier version's content the newest version (history is kept)",
                  _restore)
    rs.add_argument("table", help="table name (see `multiembed versions`)")
    rs.add_argument("version", metavar="VERSION_OR_TAG", help="a version number or a tag (or a time, as for show)")

    c = _command(sub, "compact", "merge small files and remove untagged versions older than the retention",
                 _compact)
    c.add_argument("--retention", default="7d", metavar="DURATION",
                   help="keep versions younger than this: 7d, 12h, 30m, 0s (default: %(default)s); "
                        "tagged versions and the latest are always kept; readers still on a removed version fail")
    c.add_argument("--table", help="only this table (default: every table)")

    for stage, summary in (("evaluate", "score each table version: health, labels, retrieval (to _metrics)"),
                           ("bias", "bias checks: WEAT, SEAT, gender direction, per-group gaps (to _metrics)"),
                           ("drift", "drift between a reference version and this one (to _metrics)")):
        qc = _command(sub, stage, summary, _quality(stage))
        qc.add_argument("--source", help="only this source's tables (default: all)")
        qc.add_argument("--table", help="only this table (default: every table of the config)")
        qc.add_argument("--as-of", metavar="V|TAG|TIME", help="the version to check (default: the latest)")
        if stage == "drift":
            qc.add_argument("--reference", metavar="V|TAG|TIME",
                            help="the version to compare with (default: the one the previous run published)")

    dash = _command(sub, "dashboard", "write a self-contained HTML dashboard of runs, rejects, quality and embeddings",
                    _dashboard)
    dash.add_argument("--out", default="multiembed-dashboard", metavar="DIR",
                    help="folder for index.html (default: %(default)s)")
    dash.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1 until stopped (Ctrl-C)")
    dash.add_argument("--port", type=int, default=8050, metavar="N",
                    help="port for --serve, 0 for any free one (default: %(default)s)")

    e = _command(sub, "export", "write the run, reject and metric tables as Parquet and a DuckDB file with views "
                 "for BI tools", _export)
    e.add_argument("--out", required=True, metavar="DIR", help="folder to write to (files in it are replaced)")

    _command(sub, "serve", "serve a refresh and a backfill deployment per source, run on the config's schedules "
             "until stopped (Ctrl-C)", _serve)

    d = _command(sub, "demo", "build the bundled demo data, embed it offline and show how to query it", _demo,
                 config=False)
    d.add_argument("--dir", default="multiembed-demo", help="where to write the demo (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The temporary Prefect server's telemetry writer races the first flow run for SQLite's lock.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # A first start of the temporary server migrates a new SQLite database: 20 s (the default) is too
    # little on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    steady_heap()
    args = parser().parse_args(argv)
    with _sigterm_stops() as stopped:
        try:
            args.run(args)
        except BaseException as e:
            return _exit_code(args.command, e, stopped.is_set())
    return _exit_code(args.command, None, stopped.is_set())


def _exit_code(command: str, error: BaseException | None, stopped: bool) -> int:
    """The exit code of a command that raised `error` (None: it returned), the reason in one line on stderr after
    Prefect's own log. A SIGTERM decides it, whatever its exception became on the way out."""
    if stopped:
        print(f"multiembed {command}: stopped by SIGTERM", file=sys.stderr)
        return EXIT_SIGTERM
    if error is None:
        return 0
    if isinstance(error, USAGE_ERRORS):
        print(f"multiembed {command}: {error}", file=sys.stderr)
        return 2
    if isinstance(error, KeyboardInterrupt):
        return 130
    if isinstance(error, Exception):  # the run failed
        print(f"multiembed {command}: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    raise error


if __name__ == "__main__":
    sys.exit(main())
