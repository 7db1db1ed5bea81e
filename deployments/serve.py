"""Deployments of the `backfill` and `refresh` flows for a config file, and serving them.

Each source gets its own `refresh-<source>` and `backfill-<source>` deployment, so it runs on its own
schedule (the config's `schedule.refresh` / `schedule.backfill` crons, in `schedule.timezone`) and can be
triggered on its own from the Prefect UI or `prefect deployment run`. A flow without a cron in the config
is still deployed, unscheduled, so it can be triggered. Serving runs the flows in the serving process: no
work pool or worker is needed, and the schedules are active while it runs (Prefect pauses them when it
stops). For a work pool, see `prefect.yaml` at the repository root.
"""

from __future__ import annotations

from pathlib import Path

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Schedule
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from prefect.types.entrypoint import EntrypointType

from flows.backfill import backfill, refresh
from schemas.config import SourceConfig, load_config

TAG = "multiembed"


def cron_schedules(cron: str | None, timezone: str) -> list[Schedule]:
    """The cron in the time zone, or no schedule at all (the deployment then only runs when triggered)."""
    return [Cron(cron, timezone=timezone)] if cron else []


def flow_deployment(flow: Flow, config: Path, source: SourceConfig, cron: str | None) -> RunnerDeployment:
    """`flow` for one source of the config, named `<flow>-<source>`, on `cron` in the source's time zone.

    The entrypoint is the module path (`flows.backfill.<flow>`), so it does not depend on the folder the
    server was started from.
    """
    return flow.to_deployment(
        name=f"{flow.name}-{source.name}",
        schedules=cron_schedules(cron, source.schedule.timezone),
        parameters={"config": str(config), "source": source.name},
        tags=[TAG, f"source:{source.name}"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def build_deployments(config: str | Path) -> list[RunnerDeployment]:
    """A `refresh` and a `backfill` deployment per source; raises ConfigError for a bad config."""
    path = Path(config).resolve()  # the runs may start in another folder
    settings = load_config(path)
    deployments = []
    for source in settings.sources:
        deployments.append(flow_deployment(refresh, path, source, source.schedule.refresh))
        deployments.append(flow_deployment(backfill, path, source, source.schedule.backfill))
    return deployments


def full_name(deployment: RunnerDeployment) -> str:
    """`<flow>/<deployment>`, as `prefect deployment run` and the API's name lookup take it."""
    return f"{deployment.flow_name}/{deployment.name}"


def describe_schedule(deployment: RunnerDeployment) -> str:
    """`cron '0 2 * * *' (UTC)`, or how to trigger an unscheduled deployment."""
    crons = [f"cron {s.schedule.cron!r} ({s.schedule.timezone})" for s in deployment.schedules or []]
    return ", ".join(crons) or f"no schedule; trigger it with: prefect deployment run {full_name(deployment)}"


def where_to_watch() -> str:
    """The Prefect UI to watch and trigger runs in (Prefect derives it from PREFECT_API_URL), or why there is none."""
    if not PREFECT_API_URL.value():
        return ("PREFECT_API_URL is not set: runs are recorded in a temporary local Prefect server that stops "
                "with this process. To watch them, start `prefect server start` and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api")
    return f"Watch and trigger runs in the Prefect UI: {PREFECT_UI_URL.value()}/deployments"


def serve_config(config: str | Path) -> None:
    """Serve every deployment of the config until interrupted, saying what runs when and where to watch."""
    deployments = build_deployments(config)
    width = max(len(full_name(d)) for d in deployments)
    print(f"Serving {len(deployments)} deployments of {Path(config).resolve()}:", flush=True)
    for d in deployments:
        print(f"  {full_name(d):<{width}}  {describe_schedule(d)}", flush=True)
    print(where_to_watch(), flush=True)
    serve(*deployments, print_starting_message=False)
