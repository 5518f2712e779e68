"""The relay path: who may relay, the upstream connections, the trace header."""
