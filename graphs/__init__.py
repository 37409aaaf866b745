"""Circuits as networkx graphs and files (installed as ``circuits.graphs``). Pure Python: no torch."""
