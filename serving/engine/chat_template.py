"""The chat template of models that ship without one.

The task corpus is plain ``Q: ... A: ...`` text, so the trained model has no chat format.
This template is deliberately simple and deterministic: one line per message,
``<role>: <content>``, then ``assistant:`` for the model to continue. A user message that is
already a task prompt (``Q: ... A:``) is passed through as the whole prompt when it is the
only message, so chat and completion requests for the same task see identical tokens.
A tokenizer's own ``chat_template``, when present, takes precedence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render_chat(messages: Sequence[tuple[str, str]], tokenizer: Any | None = None) -> str:
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
    if len(messages) == 1 and messages[0][0] == "user" and messages[0][1].rstrip().endswith("A:"):
        return messages[0][1].rstrip()
    lines = [f"{role}: {content}" for role, content in messages]
    return "\n".join(lines) + "\nassistant:"
