"""Progress bars for the CLI: a ``progress(done, total, message)`` callback drawing tqdm bars."""
from __future__ import annotations

import sys
from typing import Optional


class ProgressBars:
    """A ``Progress`` callback drawing tqdm bars on stderr (only on a terminal): a new bar whenever
    the total changes or the count goes back."""

    def __init__(self) -> None:
        self.bar = None
        self.total: Optional[int] = None
        self.done = 0

    def __call__(self, done: int, total: int, message: str) -> None:
        from tqdm import tqdm

        if self.bar is None or total != self.total or done < self.done:
            self.close()
            self.bar = tqdm(total=total, desc=message, file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)
            self.total, self.done = total, 0
        self.bar.set_description_str(message, refresh=False)
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
