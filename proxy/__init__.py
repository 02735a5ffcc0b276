"""The proxy server: auth, forwarding, cache, limits, metrics and the management API."""
