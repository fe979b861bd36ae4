"""HTTP plumbing shared by every client: what a server asks us to wait, and what kind of failure it was."""
