"""Code shared by the proxy, the dispatcher and the CLI."""
