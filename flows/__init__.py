"""flows: Prefect flows that audit model zoos, the hub adapters and the `lipzoo` command line."""
