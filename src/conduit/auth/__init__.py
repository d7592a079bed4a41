"""Who a caller is (master token, API key, OAuth access token) and what its policy lets it do."""
