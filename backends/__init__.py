"""Backends: one module per kind of service behind the interface in converge.backends.base."""
