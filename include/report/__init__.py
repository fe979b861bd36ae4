"""What a run did, for people: the ``runs`` dataset, the per-run HTML report, and progress messages for long loads."""
