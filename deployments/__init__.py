"""Prefect deployments of the pipeline's flows: served per source on the config's schedules (`serve`)."""
