from cluster_harness import redis_server

__all__ = ["redis_server"]
