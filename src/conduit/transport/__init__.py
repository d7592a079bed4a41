"""Front ends: Conduit's MCP server over stdio and Streamable HTTP."""
