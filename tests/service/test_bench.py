"""The benchmark's own parts: wire format, reports, and a small run end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from array import array
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from channels.config import ChannelRule
from service.bench.load import StepResult, _read_reply
from service.bench.report import Summary, histogram_svg, median_summary, summarize, table
from service.bench.scenarios import check_round_trip, kept_up
from service.bench.server import ServerProcess, exit_on_sigterm
from service.bench.wire import FrameParser, client_frame
from service.cli import main
from service.settings import Settings
from tests.support.server import running_server

if TYPE_CHECKING:
    from pathlib import Path

    from service.runner import Backend
    from tests.support.redis import RedisServer


def server_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([length])
    elif length < 1 << 16:
        head += bytes([126]) + length.to_bytes(2, "big")
    else:
        head += bytes([127]) + length.to_bytes(8, "big")
    return head + payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_client_frames_are_masked_with_a_zero_key(size: int) -> None:
    frame = client_frame(b"x" * size)
    assert frame[0] == 0x81
    assert frame[1] & 0x80  # masked, as a client must
    assert frame.endswith(b"\0\0\0\0" + b"x" * size)


def test_the_parser_yields_messages_across_any_split() -> None:
    stream = (
        server_frame(b"one")
        + server_frame(b"t" * 300)
        + server_frame(b"a", fin=False)
        + server_frame(b"b", opcode=0, fin=False)
        + server_frame(b"c", opcode=0, fin=True)
        + server_frame(b"\x0f\xa0bye", opcode=8)
    )
    for cut in range(len(stream)):
        parser = FrameParser(stream[:cut])
        got = list(parser.feed(b"")) + list(parser.feed(stream[cut:]))
        assert got == [b"one", b"t" * 300, b"abc"]
        assert parser.close_code == 4000


def test_the_parser_keeps_pings_for_the_owner_to_answer() -> None:
    parser = FrameParser()
    assert list(parser.feed(server_frame(b"p1", opcode=9) + server_frame(b"m"))) == [b"m"]
    assert parser.pings == [b"p1"]


def result(
    latencies_ms: list[int], published: int = 10, subscribers: int = 2, scheduled: int = 10
) -> StepResult:
    step = StepResult(rate=5.0, subscribers=subscribers, scheduled=scheduled, published=published)
    step.latencies_ns = array("q", [value * 1_000_000 for value in latencies_ms])
    step.delivered = len(latencies_ms)
    step.frames = len(latencies_ms) // 2
    step.wall_seconds = 2.0
    return step


def test_summary_rates_percentiles_and_losses() -> None:
    step = result(list(range(1, 19)))  # 18 of the 20 expected deliveries
    step.dropped = 1
    summary = summarize(
        step,
        scenario="rate",
        server="s",
        backend="b",
        seconds=2.0,
        server_rss_kib=2048,
        receipt="kernel",
    )
    assert (summary.offered_per_s, summary.delivered_per_s) == (10.0, 9.0)
    assert (summary.lost, summary.dropped) == (1, 1)
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.max_ms) == (9, 17, 18, 18)
    assert summary.msgs_per_frame == 2.0
    assert summary.server_rss_mib == 2.0


def test_messages_the_publisher_never_sent_count_as_offered_and_unsent() -> None:
    # 10 due, 8 sent, each delivered to both subscribers: nothing lost of what went out,
    # but the schedule was not kept.
    step = result(list(range(1, 17)), published=8)
    step.publish_times_ns = array("q", [ms * 1_000_000 for ms in range(1, 101)])
    summary = summarize(
        step,
        scenario="rate",
        server="s",
        backend="b",
        seconds=2.0,
        server_rss_kib=0,
        receipt="read",
        publisher="http",
    )
    assert (summary.offered_per_s, summary.delivered_per_s) == (10.0, 8.0)
    assert (summary.lost, summary.unsent) == (0, 2)
    assert (summary.publish_p50_ms, summary.publish_p99_ms) == (50, 99)
    assert not kept_up(summary, p99_ms=1000)


def test_the_median_of_an_even_number_of_runs_keeps_counts_whole() -> None:
    runs = [
        Summary(scenario="rate", server="s", backend="b", subscribers=count, p99_ms=value)
        for count, value in ((1000, 10.0), (999, 20.0))
    ]
    median = median_summary(runs)
    assert (median.subscribers, median.p99_ms) == (999, 15.0)


def test_median_of_runs_keeps_the_worst_losses() -> None:
    runs = [
        Summary(scenario="rate", server="s", backend="b", subscribers=1, p99_ms=value, lost=lost)
        for value, lost in ((10.0, 0), (30.0, 5), (20.0, 0))
    ]
    median = median_summary(runs)
    assert (median.p99_ms, median.lost, median.scenario) == (20.0, 5, "rate (median of 3)")


def test_table_and_histogram_render() -> None:
    summary = summarize(
        result([1, 2, 3]),
        scenario="rate",
        server="clarion",
        backend="trio",
        seconds=2.0,
        server_rss_kib=1024,
        receipt="read",
    )
    rendered = table([summary])
    assert "clarion" in rendered
    assert "p99 ms" in rendered
    assert "n/a" not in rendered  # an HTTP publisher's wait is measured
    websocket = msgspec.structs.replace(summary, publisher="websocket")
    assert table([websocket]).splitlines()[-1].split()[-2] == "n/a"  # pub p99: none to wait
    svg = histogram_svg([1_000_000, 2_000_000, 50_000_000], "title & <more>")
    assert svg.startswith("<svg")
    assert "title &amp; &lt;more&gt;" in svg
    assert svg.count("<rect") == 51  # the background and fifty buckets


@pytest.mark.parametrize(("receipt", "publisher"), [("read", "http"), ("kernel", "websocket")])
def test_a_small_rate_run_delivers_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], receipt: str, publisher: str
) -> None:
    histogram = tmp_path / "latency.svg"
    argv = ["bench", "rate", "--subscribers", "5", "--rate", "40", "--seconds", "0.5"]
    argv += ["--warmup", "0.2", "--drain", "5", "--json", "--histogram", str(histogram)]
    assert main([*argv, "--receipt", receipt, "--publisher", publisher]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    summary = json.loads(line)
    assert summary["subscribers"] == 5
    assert (summary["lost"], summary["unsent"], summary["errors"]) == (0, 0, 0)
    assert summary["delivered_per_s"] == summary["offered_per_s"] == 5 * 40
    # A latency on the clock of the kernel's timestamps: positive, and not absurd.
    assert 0 < summary["p99_ms"] < 5000
    assert summary["receipt"] == (receipt if sys.platform == "linux" else "read")
    assert summary["publisher"] == publisher
    # Only an HTTP publish is answered, and timed as the backend waits for it.
    assert (summary["publish_p99_ms"] > 0) == (publisher == "http")
    assert histogram.read_text().startswith("<svg")


def test_the_http_publisher_reconnects_when_the_server_closes_a_keep_alive_connection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # hypercorn closes a connection after 1,000 requests: one connection sends 1,500.
    argv = ["bench", "rate", "--subscribers", "2", "--rate", "1500", "--seconds", "0.8"]
    argv += ["--warmup", "0.2", "--drain", "5", "--json", "--in-flight", "1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["lost"], summary["unsent"], summary["errors"]) == (0, 0, 0)
    assert summary["delivered_per_s"] == summary["offered_per_s"] == 2 * 1500


def test_the_generator_reads_a_frame_alone_as_the_general_parser_does() -> None:
    frames = [server_frame(b"x" * size) for size in (0, 5, 125, 126, 300, 70_000)]
    for frame in frames:
        assert FrameParser().messages(frame) == list(FrameParser().feed(frame))
    # Left over from before, or more than one frame: the general parser's way.
    parser = FrameParser()
    assert parser.messages(frames[1][:3]) == []
    assert parser.messages(frames[1][3:] + frames[2]) == [b"x" * 5, b"x" * 125]


def test_a_doors_run_times_both_doors_on_one_channel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "doors", "--subscribers", "6", "--rate", "40", "--seconds", "0.5"]
    argv += ["--warmup", "0.2", "--drain", "5", "--json", "--runs", "2"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["server"] for line in lines] == ["clarion (clarion)", "clarion (pusher)"] * 3
    for summary in lines:
        assert (summary["subscribers"], summary["lost"], summary["closed"]) == (3, 0, 0)
        # Every door's subscribers are timed: each has its own latency.
        assert 0 < summary["p99_ms"] < 5000
        assert summary["delivered_per_s"] == summary["offered_per_s"]


def test_the_generator_answers_the_servers_pings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The subscribers only read: without their pongs the server would close them (4002).
    config = tmp_path / "channels.yaml"
    config.write_text("server:\n  ping_interval_seconds: 0.05\n  pong_timeout_seconds: 0.5\n")
    argv = ["bench", "rate", "--subscribers", "5", "--rate", "2", "--seconds", "2"]
    argv += ["--warmup", "0.2", "--drain", "5", "--json", "--config", str(config)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["lost"], summary["closed"]) == (0, 0)
    assert summary["delivered_per_s"] > 0


def test_a_max_run_against_a_target_measures_that_server_and_reports_the_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A running server named by --target and --server-pid, as for another server: the
    # bench starts none. No step keeps a p99 of 0 ms, so the run stops after the first.
    server = ServerProcess.clarion("trio", None, tmp_path / "server.log")
    try:
        argv = ["bench", "max", "--target", f"ws://127.0.0.1:{server.port}/ws"]
        argv += ["--server-pid", str(server.stats.pid), "--server-name", "running"]
        argv += ["--subscribers", "3", "--start-rate", "20", "--p99-ms", "0"]
        argv += ["--seconds", "0.3", "--warmup", "0.1", "--drain", "5", "--json"]
        assert main(argv) == 0
    finally:
        server.stop()
    (line,) = capsys.readouterr().out.splitlines()
    step = json.loads(line)
    assert (step["scenario"], step["server"], step["rate"]) == ("max", "running", 20.0)
    assert (step["subscribers"], step["lost"]) == (3, 0)
    assert step["p99_ms"] > 0
    assert step["server_rss_mib"] > 0  # read from /proc/PID of the server it was given


def test_a_max_run_in_a_table_says_which_step_it_kept_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "max", "--backend", "trio", "--subscribers", "3", "--start-rate", "20"]
    argv += ["--factor", "2", "--p99-ms", "0", "--seconds", "0.3", "--warmup", "0.1"]
    assert main([*argv, "--drain", "5", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("highest step kept up: none") == 2  # no step keeps a p99 of 0 ms
    assert "median of 2 runs (lost, dropped, unsent, refused, closed: the most of any run)" in out


def test_a_server_that_does_not_start_is_reported_with_its_own_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "clarion.yaml"
    config.write_text("server:\n  api_keys: [written-in-the-file]\n")
    argv = ["bench", "rate", "--config", str(config), "--subscribers", "1", "--seconds", "0.2"]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("clarion bench: error: no Clarion server answers")
    assert "it exited with 2" in error
    assert "write the key as a ${VAR} reference" in error


def test_a_small_idle_run_measures_memory(capsys: pytest.CaptureFixture[str]) -> None:
    # More connections than the warm-up's 100, whose freed memory the first ones reuse.
    assert main(["bench", "idle", "--connections", "300", "--json", "--backend", "trio"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["subscribers"] == 300
    assert summary["kib_per_connection"] > 0


def test_a_small_hop_run_compares_one_node_with_two_through_redis(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "hop", "--subscribers", "5", "--rate", "40", "--seconds", "0.5"]
    argv += ["--warmup", "0.2", "--drain", "5", "--json", "--redis", redis_server.url]
    assert main(argv) == 0
    one, two, added = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (one["server"], two["server"]) == ("one node (memory)", "two nodes (Redis)")
    assert one["lost"] == two["lost"] == 0
    assert one["delivered_per_s"] > 0
    assert two["delivered_per_s"] > 0
    assert added["added_p99_ms"] == round(two["p99_ms"] - one["p99_ms"], 2)


def test_a_server_that_closes_before_replying_fails_the_run_at_once() -> None:
    # It used to spin forever on the closed socket at 100% CPU.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(bytes((0x88, 2)) + (1011).to_bytes(2, "big"))  # close 1011
        theirs.close()
        with pytest.raises(RuntimeError, match=r"closed the connection before replying \(1011\)"):
            _read_reply(ours, FrameParser(b""))


def test_sigterm_ends_a_run_through_its_finally_blocks() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stopped = []

    def run() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            stopped.append(True)  # where a run stops its server

    with pytest.raises(SystemExit) as exited, exit_on_sigterm():
        run()
    assert (exited.value.code, stopped) == (128 + signal.SIGTERM, [True])
    assert signal.getsignal(signal.SIGTERM) is before


async def test_the_round_trip_check_passes_a_server_that_delivers(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(15):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            await check_round_trip(server.ws_url)


async def test_the_round_trip_check_names_the_refusal(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(channels=[ChannelRule(match="chat:*")])  # no rule for bench:*
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            with pytest.raises(RuntimeError, match=r"did not deliver a message.*201"):
                await check_round_trip(server.ws_url)
