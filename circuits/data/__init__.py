"""Tasks' data: the task contract (``task.py``), :class:`PromptDataset` (``dataset.py``), and a
task's reported metrics on the full model (``evaluation.py``)."""
