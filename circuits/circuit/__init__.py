"""From scores to a circuit: rank and prune (``ranking.py``), choose a size and verify it
(``select.py``), measure faithfulness and its curves (``faithfulness.py``), reduce MLPs to neurons
(``neurons.py``), and ``discover.py``, which runs those steps in order; ``run_folder.py`` writes
the result."""
