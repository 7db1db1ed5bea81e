"""`multiembed`: the command line. Exit 0 on success, 2 for a usage, config or input error, 1 for a failure."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from schemas.config import ConfigError
from tasks.embedders.base import ModelLoadError
from tasks.sources import InputError

USAGE_ERRORS = (ConfigError, InputError, ModelLoadError)


def _backfill(args: argparse.Namespace) -> None:
    from flows.backfill import backfill

    _check_config(args)
    backfill(config=str(args.config), source=args.source, full=args.full)


def _refresh(args: argparse.Namespace) -> None:
    from flows.backfill import refresh

    _check_config(args)
    refresh(config=str(args.config), source=args.source)


def _check_config(args: argparse.Namespace) -> None:
    """Fail fast on a bad config or source name, before Prefect starts."""
    from schemas.config import load_config

    settings = load_config(args.config)
    if args.source:
        settings.source(args.source)


def _versions(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_versions
    from schemas.config import load_config

    print_versions(load_config(args.config).database, args.table)


def _show(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_table
    from schemas.config import load_config

    print_table(load_config(args.config).database, args.table, args.as_of, args.limit)


def _restore(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_restore
    from schemas.config import load_config

    print_restore(load_config(args.config).database, args.table, args.version)


def _compact(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_compact
    from schemas.config import load_config

    print_compact(load_config(args.config).database, args.retention, args.table)


def _serve(args: argparse.Namespace) -> None:
    from deployments.serve import serve_config

    serve_config(args.config)


def _demo(args: argparse.Namespace) -> None:
    from multiembed.demo import run_demo

    run_demo(args.dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multiembed", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("backfill", help="embed every row of the source(s) and publish a version per table")
    b.add_argument("config", help="path of the pipeline config (YAML)")
    b.add_argument("--source", help="only this source (default: all)")
    b.add_argument("--full", action="store_true", help="re-embed every row, even rows whose content is unchanged")
    b.set_defaults(run=_backfill)

    r = sub.add_parser("refresh", help="embed only new and changed rows, remove rows that left; publish if any changed")
    r.add_argument("config", help="path of the pipeline config (YAML)")
    r.add_argument("--source", help="only this source (default: all)")
    r.set_defaults(run=_refresh)

    v = sub.add_parser("versions", help="list each table's versions with time, row count and tags")
    v.add_argument("config", help="path of the pipeline config (YAML)")
    v.add_argument("--table", help="only this table")
    v.set_defaults(run=_versions)

    s = sub.add_parser("show", help="show a table at a version, tag or time: version, rows, model metadata, first rows")
    s.add_argument("config", help="path of the pipeline config (YAML)")
    s.add_argument("table", help="table name (see `multiembed versions`)")
    s.add_argument("--as-of", metavar="V|TAG|TIME",
                   help="a version number, a tag (run-...) or an ISO 8601 time, UTC unless it has an offset: "
                        "the latest version at or before it (default: the latest version)")
    s.add_argument("--limit", type=int, default=5, metavar="N", help="rows to print (default: %(default)s)")
    s.set_defaults(run=_show)

    rs = sub.add_parser("restore", help="make an earlier version's content the newest version (history is kept)")
    rs.add_argument("config", help="path of the pipeline config (YAML)")
    rs.add_argument("table", help="table name (see `multiembed versions`)")
    rs.add_argument("version", metavar="VERSION_OR_TAG", help="a version number or a tag (or a time, as for show)")
    rs.set_defaults(run=_restore)

    c = sub.add_parser("compact", help="merge small files and remove untagged versions older than the retention")
    c.add_argument("config", help="path of the pipeline config (YAML)")
    c.add_argument("--retention", default="7d", metavar="DURATION",
                   help="keep versions younger than this: 7d, 12h, 30m, 0s (default: %(default)s); "
                        "tagged versions and the latest are always kept; readers still on a removed version fail")
    c.add_argument("--table", help="only this table (default: every table)")
    c.set_defaults(run=_compact)

    sv = sub.add_parser("serve", help="serve a refresh and a backfill deployment per source, run on the config's "
                                       "schedules until stopped (Ctrl-C)")
    sv.add_argument("config", help="path of the pipeline config (YAML)")
    sv.set_defaults(run=_serve)

    d = sub.add_parser("demo", help="build the bundled demo data, embed it offline and show how to query it")
    d.add_argument("--dir", default="multiembed-demo", help="where to write the demo (default: %(default)s)")
    d.set_defaults(run=_demo)
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
