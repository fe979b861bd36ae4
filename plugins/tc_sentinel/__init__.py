"""Airflow adapters for tc-sentinel: hooks that turn Connections into the clients in ``include/``."""
