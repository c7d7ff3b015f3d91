"""Real servers for tests, started on loopback by fixtures and waited for (one module per server)."""
