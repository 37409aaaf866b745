"""The one exception type for user errors: the CLI prints its message on one line and exits 2."""


class CircuitsError(Exception):
    """A problem the user can fix (bad name, missing file, no network...). The message says how."""
