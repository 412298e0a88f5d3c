"""`service.keepalive`: one task pings the quiet connections of a node and ends the dead
ones, with real cancel scopes and a clock, on both backends."""

from __future__ import annotations

import math

import anyio

from service.keepalive import MAX_TICK_SECONDS, KeepAlive, Quiet, open_keepalive

QUIET_SECONDS = 0.2
PONG_SECONDS = 0.2


class Pinged:
    """A door's handler that counts its pings."""

    def __init__(self) -> None:
        self.pings = 0
        self._pinged = anyio.Event()

    def ping(self) -> None:
        self.pings += 1
        self._pinged.set()
        self._pinged = anyio.Event()

    async def wait_for(self, pings: int) -> None:
        while self.pings < pings:
            await self._pinged.wait()

    async def handle(self, frame: str | bytes) -> None:
        pass


async def test_a_client_that_talks_is_never_pinged(anyio_backend: str) -> None:
    handler, stop = Pinged(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with open_keepalive() as keepalive:
            with stop, Quiet(keepalive, handler, stop, QUIET_SECONDS, PONG_SECONDS) as quiet:
                for _ in range(20):  # 1 s: five quiet times, each with frames in it
                    quiet.heard = True
                    await anyio.sleep(QUIET_SECONDS / 4)
    assert (handler.pings, quiet.timed_out, stop.cancel_called) == (0, False, False)


async def test_a_quiet_client_is_pinged_and_one_that_answers_stays(anyio_backend: str) -> None:
    handler, stop = Pinged(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with open_keepalive() as keepalive:
            with stop, Quiet(keepalive, handler, stop, QUIET_SECONDS, PONG_SECONDS) as quiet:
                started = anyio.current_time()
                await handler.wait_for(1)
                waited = anyio.current_time() - started
                # Pinged once the quiet time is over, within two ticks of it.
                assert QUIET_SECONDS <= waited <= QUIET_SECONDS + 3 * QUIET_SECONDS / 4
                quiet.heard = True  # the pong
                # Quiet again after it: pinged again, and not ended meanwhile.
                await handler.wait_for(2)
                assert not stop.cancel_called
    assert not quiet.timed_out


async def test_a_client_that_does_not_answer_a_ping_is_ended(anyio_backend: str) -> None:
    handler, stop = Pinged(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with open_keepalive() as keepalive:
            started = anyio.current_time()
            with stop, Quiet(keepalive, handler, stop, QUIET_SECONDS, PONG_SECONDS) as quiet:
                await anyio.sleep_forever()
            ended = anyio.current_time() - started
    assert stop.cancelled_caught
    assert (handler.pings, quiet.timed_out) == (1, True)
    assert QUIET_SECONDS + PONG_SECONDS <= ended < 1.5  # two ticks late at most, and noise


async def test_without_a_quiet_time_a_client_is_never_watched(anyio_backend: str) -> None:
    handler, stop = Pinged(), anyio.CancelScope()
    keepalive = KeepAlive()
    with Quiet(keepalive, handler, stop, math.inf, PONG_SECONDS):
        assert keepalive._watched == set()  # the test's view inside
    with Quiet(keepalive, handler, stop, QUIET_SECONDS, PONG_SECONDS) as quiet:
        assert keepalive._watched == {quiet}
    assert keepalive._watched == set()  # and forgotten after its block


async def test_a_shorter_quiet_time_wakes_a_keepalive_on_a_long_tick(anyio_backend: str) -> None:
    # The first connection's times make the tick a second; a second connection with
    # short ones is pinged on time all the same.
    slow, fast, stop = Pinged(), Pinged(), anyio.CancelScope()
    with anyio.fail_after(5):
        async with open_keepalive() as keepalive:
            with stop:
                with (
                    Quiet(keepalive, slow, stop, 60.0, 60.0),
                    Quiet(keepalive, fast, stop, QUIET_SECONDS, 60.0),
                ):
                    await anyio.sleep(QUIET_SECONDS + MAX_TICK_SECONDS / 2)
    assert (slow.pings, fast.pings) == (0, 1)


async def test_many_connections_are_looked_at_in_batches(anyio_backend: str) -> None:
    handlers = [Pinged() for _ in range(5_000)]  # more than a batch
    stop = anyio.CancelScope()
    with anyio.fail_after(10):
        async with open_keepalive() as keepalive:
            quiets = [Quiet(keepalive, h, stop, QUIET_SECONDS, 60.0) for h in handlers]
            for quiet in quiets:
                quiet.__enter__()
            await anyio.sleep(QUIET_SECONDS * 2)
            for quiet in quiets:
                quiet.__exit__(None, None, None)
    assert {handler.pings for handler in handlers} == {1}
