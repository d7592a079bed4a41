"""The gateway core: executions, tool routing, admission."""
