"""Hugging Face libraries under JSON logs: their loggers go through the root handlers, no bars.

``transformers`` gives its loggers a handler of their own and draws tqdm progress bars
(loading and writing weights) on stderr; neither is a JSON line. Called by processes that
already import ``transformers`` (the engine, the trainer), so this module imports it lazily
and ``observability.logs`` stays free of heavy imports.
"""

from __future__ import annotations


def route_transformers_logs() -> None:
    """Send ``transformers`` records to the root logger's handlers and turn off its progress bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    disable_progress_bars()


def disable_progress_bars() -> None:
    """No ``transformers`` tqdm bars in this process (loading and writing weights)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
