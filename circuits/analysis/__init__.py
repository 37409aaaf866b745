"""The pieces a task's analysis is built from; each task owns its analysis (``task.analysis``).

A task names its analysis command as ``"module:function"`` in its ``analysis`` attribute, and
``circuits analyze TASK`` runs it (greater-than's is :mod:`circuits.tasks.greater_than_analysis`).
The shared modules, one job each:

- :mod:`~circuits.analysis.circuit`: a saved circuit's keep mask, heads and MLPs on a model's graph;
- :mod:`~circuits.analysis.forward`: ``tokens -> logits`` through the graph engine for a circuit alone,
  with cheap teacher forcing (key/value cache);
- :mod:`~circuits.analysis.runs`: one clean and one corrupted pass, kept compactly, shared by the analyses;
- :mod:`~circuits.analysis.html`: the self-contained report;
- :mod:`~circuits.analysis.files`: atomic PNG and CSV writing.

Nothing here prints.
"""
