"""Event buses: where the proxy hands one event per request without waiting on I/O."""
