"""Transporter tests: the shared conformance suite and one plug-in module per transporter."""
