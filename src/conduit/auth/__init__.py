"""The HTTP door: who a bearer token is (the master token, a principal's API key, an OAuth JWT), or 401."""
