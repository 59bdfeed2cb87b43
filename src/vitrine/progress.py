"""Progress bars for long loops: shown on a terminal, silent in logs, pipes and tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    # disable=None lets tqdm hide itself when stderr is not a terminal.
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
