"""The sandbox bridge: the loopback JSON-RPC server that is a sandbox's only way out."""
