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
    from schemas.config import load_config

    settings = load_config(args.config)  # fail fast, before Prefect starts
    if args.source:
        settings.source(args.source)
    backfill(config=str(args.config), source=args.source)


def _versions(args: argparse.Namespace) -> None:
    from multiembed.catalog import print_versions
    from schemas.config import load_config

    print_versions(load_config(args.config).database, args.table)


def _demo(args: argparse.Namespace) -> None:
    from multiembed.demo import run_demo

    run_demo(args.dir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multiembed", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("backfill", help="embed every row of the source(s) and publish a version per table")
    b.add_argument("config", help="path of the pipeline config (YAML)")
    b.add_argument("--source", help="only this source (default: all)")
    b.set_defaults(run=_backfill)

    v = sub.add_parser("versions", help="list each table's versions with time, row count and tags")
    v.add_argument("config", help="path of the pipeline config (YAML)")
    v.add_argument("--table", help="only this table")
    v.set_defaults(run=_versions)

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
