"""Shared test setup: the Redis fixtures come from cachecow.testing.plugin (see pyproject)."""
