"""Scoring methods, one module each, found through the ``circuits.methods`` entry point."""
