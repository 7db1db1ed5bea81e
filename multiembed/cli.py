"""`multiembed`: the command line. Exit 0 on success, 2 for a usage, config or input error, 1 for a failure."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from schemas.config import ConfigError, load_config
from tasks.embedders.base import ModelLoadError
from tasks.sources import InputError

USAGE_ERRORS = (ConfigError, InputError, ModelLoadError)


def _database(args: argparse.Namespace) -> str:
    """The database of the config named on the command line (a ConfigError if the config is bad)."""
    return load_config(args.config).database


def _check_sources(args: argparse.Namespace) -> None:
    """Fail fast on a bad config or source name, before Prefect starts."""
    settings = load_config(args.config)
    if args.source:
        settings.source(args.source)


def _backfill(args: argparse.Namespace) -> None:
    _check_sources(args)
    from flows.backfill import backfill

    backfill(config=str(args.config), source=args.source, full=args.full)


def _refresh(args: argparse.Namespace) -> None:
    _check_sources(args)
    from flows.backfill import refresh

    refresh(config=str(args.config), source=args.source)


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


def _serve(args: argparse.Namespace) -> None:
    load_config(args.config)  # fail fast on a bad config, before Prefect and the flows are imported
    from deployments.serve import serve_config

    serve_config(args.config)


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multiembed", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = _command(sub, "backfill", "make every table of the source(s) match its input; publish a version per "
                 "table that changed", _backfill)
    b.add_argument("--source", help="only this source (default: all)")
    b.add_argument("--full", action="store_true", help="re-embed every row, even rows whose content is unchanged")

    r = _command(sub, "refresh", "embed only new and changed rows, remove rows that left; publish if any changed",
                 _refresh)
    r.add_argument("--source", help="only this source (default: all)")

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
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except USAGE_ERRORS as e:
        print(f"multiembed {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the run failed: say so in one line after Prefect's own log
        print(f"multiembed {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
