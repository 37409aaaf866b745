"""``circuits benchmark``: every method on every task of one model, scored as MIB scores them, resumable."""
