"""Built-in tasks, installed as ``circuits.tasks``; each registers through the ``circuits.tasks`` entry point."""
