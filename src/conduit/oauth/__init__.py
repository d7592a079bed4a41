"""OAuth 2.1 for upstream credentials: discovery (RFC 9728, RFC 8414) and authorization code with PKCE."""
