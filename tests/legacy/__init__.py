"""Builders of the original File Conveyor's state databases, for the upgrade tests."""
