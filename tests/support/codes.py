"""Every error class the server may answer with, from the two modules that define them."""

from __future__ import annotations

from channels import errors as channel_errors
from channels.errors import ChannelsError
from service import errors as wire_errors
from service.errors import ProtocolError

__all__ = ("error_classes",)


def error_classes() -> list[type[ChannelsError | ProtocolError]]:
    """The concrete error classes (those with a code), in code order."""
    found = [
        cls
        for module in (wire_errors, channel_errors)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, ProtocolError | ChannelsError) and cls.code
    ]
    return sorted(found, key=lambda cls: cls.code)
