"""The chat template every model directory ships, and how the embedded engine renders chat.

The task corpus is plain ``Q: ... A: ...`` text, so the trained model has no chat format.
The template is deliberately simple and deterministic: one line per message,
``<role>: <content>``, then ``assistant:`` for the model to continue. A user message that is
already a task prompt (``Q: ... A:``) is passed through as the whole prompt when it is the
only message, so chat and completion requests for the same task see identical tokens.

It is a Jinja template, written into the model directory by the trainer
(``training.tokenizer.save_tokenizer``), because vLLM takes its chat template from there and
refuses chat requests without one. The embedded engine renders the same template through
the tokenizer (a tokenizer's own template, when present, takes precedence; this one stands
in for directories saved without any). The template starts with the BOS token as vLLM
expects (it tokenizes a rendered chat without adding special tokens); the embedded engine's
tokenizer adds BOS itself, so :func:`render_chat` leaves it out and both engines see the
same token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CHAT_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif -%}"
    "{%- if messages | length == 1 and messages[0]['role'] == 'user'"
    " and messages[0]['content'].rstrip().endswith('A:') -%}"
    "{{ messages[0]['content'].rstrip() }}"
    "{%- else -%}"
    "{%- for message in messages -%}"
    "{{ message['role'] }}: {{ message['content'] }}{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '\\nassistant:' }}{% endif -%}"
    "{%- endif -%}"
)


def render_chat(messages: Sequence[tuple[str, str]], tokenizer: Any | None = None) -> str:
    """The prompt text for ``messages``, without the BOS token (the tokenizer adds it)."""
    chat = [{"role": role, "content": content} for role, content in messages]
    if tokenizer is None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        template = ImmutableSandboxedEnvironment().from_string(CHAT_TEMPLATE)
        return template.render(messages=chat, add_generation_prompt=True, bos_token=None)
    text = tokenizer.apply_chat_template(
        chat,
        chat_template=getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos) :] if bos and text.startswith(bos) else text
