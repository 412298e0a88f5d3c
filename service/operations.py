"""The server API's operations as the HTTP API runs them: a request in, its answer out.

Each ``/api/`` route of the server API reads its request (`service.apibodies`) from the
body, or from the query for a GET, and runs it here; ``POST /api/batch`` runs several,
each answered as it would be alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from channels.errors import ChannelsError
from service.apibodies import (
    BatchItem,
    BroadcastRequest,
    ChannelsReply,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRequest,
    PresenceRequest,
    PresenceStatsReply,
    PublishRequest,
    UnsubscribeRequest,
    broadcast_reply,
)
from service.errors import ProtocolError, Unauthorized
from service.protocol import (
    HistoryEntry,
    HistoryReply,
    PresenceReply,
    PublishReply,
    Reply,
    encode,
    encode_error,
)

if TYPE_CHECKING:
    from collections import Counter

    from service.protocol import Frame
    from service.serverapi import ServerAPI

__all__ = ("KEYED", "check_keys", "run", "run_batch")

#: The requests only a caller with an API key may make: they act on other users'
#: connections, which no anonymous caller may.
KEYED: Final = (DisconnectRequest, UnsubscribeRequest)


def check_keys(kind: type[BatchItem], *, keys_set: bool) -> None:
    """Refuse a `KEYED` request *kind* when no API keys are set (*keys_set*).

    Raises:
        Unauthorized: then.
    """
    if issubclass(kind, KEYED) and not keys_set:
        raise Unauthorized(f"{kind.__struct_config__.tag} needs server.api_keys to be set")


async def run(api: ServerAPI, request: BatchItem, *, keys_set: bool) -> Frame:
    """Run *request* with *api*; return its answer.

    Raises:
        Unauthorized: for a `KEYED` request when no API keys are set (*keys_set*).
        ProtocolError, ChannelsError: as the server API raises them.
    """
    check_keys(type(request), keys_set=keys_set)
    match request:
        case PublishRequest(channel=channel, data=data, idempotency_key=key):
            published = await api.publish(channel, data, idempotency_key=key)
            position = published.position
            return PublishReply(
                channel=channel,
                offset=position.offset,
                epoch=position.epoch,
                duplicate=published.duplicate,
            )
        case BroadcastRequest(channels=channels, data=data, idempotency_key=key):
            return broadcast_reply(
                channels, await api.broadcast(channels, data, idempotency_key=key)
            )
        case HistoryRequest(channel=channel, since=since, limit=limit):
            page = await api.history(channel, since=since, limit=limit)
            return HistoryReply(
                channel=channel,
                offset=page.position.offset,
                epoch=page.position.epoch,
                messages=[HistoryEntry(item.offset, item.data) for item in page.publications],
            )
        case PresenceRequest(channel=channel, count_only=True):
            stats = await api.presence_stats(channel)
            return PresenceStatsReply(
                channel=channel, client_count=stats.clients, user_count=stats.users
            )
        case PresenceRequest(channel=channel):
            return PresenceReply(channel=channel, clients=await api.presence(channel))
        case ChannelsRequest(prefix=prefix, cursor=cursor, limit=limit):
            listed = await api.channels(prefix=prefix, cursor=cursor, limit=limit)
            return ChannelsReply(channels=listed.channels, cursor=listed.cursor)
        case DisconnectRequest(user=user, code=code, reason=reason, until=until):
            await api.disconnect(user, code=code, reason=reason, until=until)
            return Reply()
        case UnsubscribeRequest(user=user, channel=channel):
            await api.unsubscribe(user, channel)
            return Reply()
    raise AssertionError(f"no operation for {request!r}")  # pragma: no cover - exhaustive


async def run_batch(
    api: ServerAPI, requests: list[BatchItem], *, keys_set: bool, errors: Counter[int]
) -> list[bytes]:
    """Run *requests* one after the other; return each one's encoded answer, in order.

    A request that fails is answered with its error (counted in *errors*) and does not
    stop the others.
    """
    answers = []
    for request in requests:
        try:
            answers.append(encode(await run(api, request, keys_set=keys_set)))
        except (ProtocolError, ChannelsError) as exc:
            errors[exc.code] += 1
            answers.append(encode_error(exc.code, str(exc)))
    return answers
