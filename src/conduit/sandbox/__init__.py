"""Sandboxed runtimes: each run gets a fresh, single-use sandbox with enforced limits."""
