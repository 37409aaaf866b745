"""circuits: circuit discovery for language models.

The pipeline: task -> dataset -> model hooks -> scores -> circuit -> graph -> export.
Import the pieces you need; nothing here imports torch.
"""
__version__ = "0.1.0"

from circuits import _shims  # noqa: E402  (old module paths, kept for one release)

_shims.install()
