"""The PicoAPI registry master: a durable service registry with scheduled health checks."""
