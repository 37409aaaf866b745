"""Analyses of a model (and of a circuit alone) on a task, with pictures and an offline HTML report.

Modules, one job each:

- :mod:`~circuits.analysis.circuit`: a saved circuit's keep mask, heads and MLPs on a model's graph;
- :mod:`~circuits.analysis.forward`: ``tokens -> logits`` through the graph engine for a circuit alone,
  with cheap teacher forcing (key/value cache);
- :mod:`~circuits.analysis.runs`: one clean and one corrupted pass, kept compactly, shared by the analyses;
- :mod:`~circuits.analysis.heatmaps`: p(YY' | YY) matrices, PD and CS by start year;
- :mod:`~circuits.analysis.attention`: mean attention from the answer position;
- :mod:`~circuits.analysis.mlps`: logit lens of MLP outputs, direct vs indirect effects;
- :mod:`~circuits.analysis.neurons`: exact neuron effects, output directions, joint effect;
- :mod:`~circuits.analysis.html`: the self-contained report;
- :mod:`~circuits.analysis.files`: atomic PNG and CSV writing;
- :mod:`~circuits.analysis.greater_than`: the greater-than analysis end to end (``analyze`` then ``write``).

Nothing here prints.
"""
from circuits.analysis.greater_than import Analysis, analyze, write

__all__ = ["Analysis", "analyze", "write"]
