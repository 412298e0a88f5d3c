"""The Pusher Channels door: protocol 7 at ``/app/{key}``, the HTTP API under ``/apps/{id}/``."""

from __future__ import annotations

__all__: tuple[str, ...] = ()
