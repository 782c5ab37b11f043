"""Chat messages to a prompt with the package's own chat template (Jinja, sandboxed).

The template is compiled once per model in an immutable sandbox: a package's template is data
from a model repository and must not reach the daemon's objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.errors import InvalidRequest

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 512


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself: its text is the template author's."""


def _raise(message: str):
    raise _TemplateRaised(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        self._template = environment.from_string(source)
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[ChatMessage]) -> str:
        check_messages(messages)
        try:
            return self._template.render(messages=[{"role": m.role, "content": m.content} for m in messages],
                                         add_generation_prompt=True, **self._specials)
        except _TemplateRaised as exc:
            raise InvalidRequest("messages", f"the model's chat template refused them: {str(exc)[:200]}") from None
        except TemplateError as exc:
            raise InvalidRequest("messages", f"the model's chat template failed ({exc.__class__.__name__})") from None


def check_messages(messages: list[ChatMessage]) -> None:
    if not messages:
        raise InvalidRequest("messages", "must hold at least one message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest("messages", f"holds {len(messages)} messages; at most {MAX_MESSAGES}")
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidRequest(f"messages[{index}].role", f"must be one of {', '.join(ROLES)}")
        if not message.content:
            raise InvalidRequest(f"messages[{index}].content", "must not be empty")
