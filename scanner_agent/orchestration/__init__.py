"""The thin Prefect layer: the flow and its tasks, run creation, the deployment, automations, reports."""
