"""Fixtures for the config tests (importable as tests.configs)."""
