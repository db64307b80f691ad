"""Wire types shared by the gateway and the neuron (they talk HTTP with these, never import each other).

``WireStruct`` is the base of every message on the wire. Its settings:

- ``kw_only=True``: fields are named at construction, so adding one never shifts positional arguments.
- ``omit_defaults=True``: encoded messages carry only what differs from the defaults, which keeps them small
  and lets an older peer decode a newer message.
- unknown fields are *ignored* (msgspec's default): OpenAI clients and newer neurons send fields this version
  does not model, and that must not be an error. Every field added later has a default; none changes type.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, TypeVar

import msgspec

from helexa.errors import InvalidRequest

_T = TypeVar("_T")

__all__ = [
    "MODEL_ID_MAX_LENGTH",
    "ModelId",
    "WireStruct",
    "check_model_id",
    "decode_request_body",
    "explain_validation_error",
    "is_ip_address",
    "reject_control_characters",
]

MODEL_ID_MAX_LENGTH = 256
# Hugging Face style ids ("org/name", "name:tag", "name@rev") and nothing that could walk a file system:
# no leading slash or dot, no "..", no backslash, no empty path segment, no whitespace or control characters.
_MODEL_ID = re.compile(r"^(?!.*\.\.)(?!.*//)[A-Za-z0-9_][A-Za-z0-9._:@+/-]*(?<!/)$")

ModelId = Annotated[
    str,
    msgspec.Meta(
        pattern=_MODEL_ID.pattern,
        max_length=MODEL_ID_MAX_LENGTH,
        description="A model id such as 'org/name' or 'name:tag'; no '..', no leading '/' or '.'.",
    ),
]


def is_ip_address(text: str) -> bool:
    """``text`` is an IPv4 or IPv6 address literal (what may become a peer's address in argv or a Host check).

    Without a scope id: Python accepts ``fe80::1%<anything>`` — spaces and flags included — as an IPv6
    address, and that text would go on into argv and environment as it is.
    """
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_model_id(model_id: str) -> str:
    """Return ``model_id`` unchanged if it is a safe model id, else raise ``ValueError`` saying why."""
    if not model_id:
        raise ValueError("model id is empty")
    if len(model_id) > MODEL_ID_MAX_LENGTH:
        raise ValueError(f"model id is longer than {MODEL_ID_MAX_LENGTH} characters")
    if not _MODEL_ID.match(model_id):
        raise ValueError(
            f"model id {model_id!r} is not allowed: use letters, digits and . _ - : @ + /, "
            "starting with a letter, digit or '_', with no '..', '//' or trailing '/'"
        )
    return model_id


def reject_control_characters(message: object, *names: str) -> None:
    """:raises InvalidRequest: a text field ``names`` of ``message`` holds a control character (a NUL in a path,
    a newline in a header-bound value) — named in the error."""
    for name in names:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in getattr(message, name)):
            raise InvalidRequest(f"{name}: control characters are not allowed", param=name)


def explain_validation_error(message: str) -> str:
    """msgspec's message, with the model-id regex replaced by what it means."""
    if "matching regex" in message and _MODEL_ID.pattern[:8] in message.replace("\\\\", "\\"):
        path = message.rpartition(" - at ")[2]
        return (
            "model id not allowed: use letters, digits and . _ - : @ + /, starting with a letter, digit or '_', "
            f"with no '..', '//' or trailing '/' - at {path}"
        )
    return message


_MISSING = re.compile(r"Object missing required field `(\w{1,64})`")


def decode_request_body(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    """Decode a request body with ``decoder``.

    :raises InvalidRequest: not JSON; or a field of the wrong type or value, as ``"<field>: <what is wrong>"``
        with ``param`` set to the field (``messages[0].role``), so every API names the field the same way.
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = explain_validation_error(str(exc))
        message, sep, path = text.rpartition(" - at `")
        if not sep:
            missing = _MISSING.fullmatch(text)  # a required field of the top level: msgspec gives no path
            raise InvalidRequest(f"invalid request: {text}", param=missing[1] if missing else None) from None
        field = path.rstrip("`").removeprefix("$.")
        raise InvalidRequest(f"{field}: {message}", param=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


class WireStruct(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of wire messages: keyword-only, defaults omitted when encoding, unknown fields ignored."""
