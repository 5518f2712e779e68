"""Debug mode: see every message and what Mailman would do with it."""
