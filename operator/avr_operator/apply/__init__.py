"""Cluster I/O: server-side apply of rendered manifests, pruning, preconditions, status."""
