"""One message type at every edge: a conversation turn is ``{"role": ..., "content": ..., ...}`` with a known role
and text content, checked by one normaliser whose errors name the record and the field.

    messages = normalize_messages(raw, source="in.jsonl", line=3)         # records, `treasure generate --input`
    messages = normalize_messages(body["messages"], rules=OPENAI_REQUEST)  # `treasure serve`

A bad message raises a RecordError naming ``source:line: field: what is wrong`` (``messages[2].content: empty``);
serve answers it as HTTP 400 with the field as the OpenAI error's ``param``. What differs between the edges is
declared once as `MessageRules`, not written as another copy of the checks: a request to an OpenAI-compatible
server may use OpenAI's forms (role ``developer``, ``null`` content, a list of text parts) and an empty turn, and
only role and content reach the chat template; a dataset record must hold text in every turn and keeps its other
message fields (``name``, ...) as they were. Whole-record rules (an assistant turn last) are records.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from treasure.errors import RecordError

ROLES = ("system", "user", "assistant", "tool")
OPENAI_ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system turn


@dataclass(frozen=True)
class MessageRules:
    """What one edge accepts beyond the common shape (a list of objects with a known role and text content)."""

    openai_forms: bool = False  # role "developer", content null (-> "") or a list of {"type": "text"} parts
    allow_empty: bool = False  # a turn whose content is empty or blank
    keep_fields: bool = True  # other message fields kept; False: only role and content come back


RECORD = MessageRules()
OPENAI_REQUEST = MessageRules(openai_forms=True, allow_empty=True, keep_fields=False)


def _error(source: str, line: int | None):
    def err(field: str, message: str) -> RecordError:
        return RecordError(message, source=source, line=line, field=field)

    return err


def check_content(
    content: Any,
    field: str,
    rules: MessageRules = RECORD,
    *,
    max_chars: int | None = None,
    source: str = "<input>",
    line: int | None = None,
) -> str:
    """A turn's text as the rules allow it; raises a RecordError naming `field`."""
    err = _error(source, line)
    if not isinstance(content, str):
        raise err(field, f"expected a string, got {type(content).__name__}")
    if not rules.allow_empty and not content.strip():
        raise err(field, "empty")
    if max_chars is not None and len(content) > max_chars:
        raise err(field, f"{len(content):,} characters is over the limit of {max_chars:,}")
    return content


def _openai_text(content: Any, field: str, err) -> Any:
    """OpenAI's content forms as one string: null is empty, text parts are joined (other parts are refused)."""
    if content is None:
        return ""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise err(field, "only text parts are supported")
        parts.append(part["text"])
    return "".join(parts)


def normalize_message(
    raw: Any,
    field: str,
    rules: MessageRules = RECORD,
    *,
    max_chars: int | None = None,
    source: str = "<input>",
    line: int | None = None,
) -> dict[str, Any]:
    """One turn, checked: a copy with its role and content (and, by the rules, its other fields)."""
    err = _error(source, line)
    if not isinstance(raw, dict):
        raise err(field, f"expected a message object, got {type(raw).__name__}")
    if "role" not in raw:
        raise err(f"{field}.role", "missing")
    role = raw["role"]
    if rules.openai_forms and isinstance(role, str):
        role = OPENAI_ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise err(f"{field}.role", f"unknown role {role!r} (valid: {', '.join(ROLES)})")
    if rules.openai_forms:
        content = _openai_text(raw.get("content"), f"{field}.content", err)
    elif "content" not in raw:
        raise err(f"{field}.content", "missing")
    else:
        content = raw["content"]
    content = check_content(content, f"{field}.content", rules, max_chars=max_chars, source=source, line=line)
    if rules.keep_fields:
        return {**raw, "role": role, "content": content}
    return {"role": role, "content": content}


def normalize_messages(
    raw: Any,
    *,
    field: str = "messages",
    rules: MessageRules = RECORD,
    max_chars: int | None = None,
    source: str = "<input>",
    line: int | None = None,
) -> list[dict[str, Any]]:
    """A conversation, checked turn by turn; the first bad turn raises a RecordError naming `field[i]...`."""
    err = _error(source, line)
    if not isinstance(raw, list):
        raise err(field, f"expected a list of messages, got {type(raw).__name__}")
    if not raw:
        raise err(field, "empty (a conversation needs at least one message)")
    return [
        normalize_message(m, f"{field}[{i}]", rules, max_chars=max_chars, source=source, line=line)
        for i, m in enumerate(raw)
    ]
