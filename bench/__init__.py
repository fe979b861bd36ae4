"""Benchmarks of the pipeline: transform throughput, memory scaling, extract, load efficiency and delta requests."""
