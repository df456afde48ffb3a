"""Cluster operation helpers (local multi-node cluster, job submission)."""
