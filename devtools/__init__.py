"""Developer tooling: run a plain Airflow against the simulators (demo, DAG tests, benchmarks)."""
