"""Greater-than's own analysis: the paper's figures for a model (and for a circuit alone).

``circuits analyze greater-than`` runs it; the task names it in ``GreaterThan.analysis``.
Modules, one job each:

- :mod:`~circuits.tasks.greater_than_analysis.heatmaps`: p(YY' | YY) matrices, PD and CS by start year;
- :mod:`~circuits.tasks.greater_than_analysis.attention`: mean attention from the answer position, YY marked;
- :mod:`~circuits.tasks.greater_than_analysis.mlps`: logit lens of MLP outputs on the year tokens, direct vs
  indirect effects;
- :mod:`~circuits.tasks.greater_than_analysis.neurons`: exact neuron effects, output directions read as year
  logits, joint effect;
- :mod:`~circuits.tasks.greater_than_analysis.analysis`: the whole analysis (``analyze`` then ``write``);
- :mod:`~circuits.tasks.greater_than_analysis.command`: the command line (imports nothing heavy until it runs).

The shared pieces (a circuit on a model's graph, the engine forward with teacher forcing, stored runs,
files, the HTML report) are in :mod:`circuits.analysis`.  Nothing here prints, except the command.
"""
