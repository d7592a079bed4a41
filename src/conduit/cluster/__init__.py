"""Many replicas, one state: what Conduit shares through Redis when ``cluster.redisUrl`` is set.

Each replica stays a self-contained cell (its gateway, its sandboxes, their bridge); only what must be
the same everywhere lives in Redis: rate-limit counters (``conduit.core.ratelimit``), per-principal
credentials (``conduit.upstream.credential_store``) and OAuth tokens with their refresh lock
(``conduit.upstream.token_state``). :class:`~conduit.cluster.store.SharedStore` is the one link to it.
"""
