"""Pipeline stages: extract, normalize, dedupe, load, verify, snapshots and watermarks."""
