"""The engine's configuration: what it reads of the file, and how it reads it."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from channels.config import ChannelRule, Config, ServerConfig
from channels.errors import ConfigError


class WithSecret(Config, frozen=True):
    """A configuration that extends the engine's, as the server's does."""

    SECRETS: ClassVar = {"vault.token": "token"}

    vault: dict[str, str] = msgspec.field(default_factory=dict)


def test_the_engine_knows_only_its_own_server_keys() -> None:
    config = Config.parse("server: {outbox_messages: 8, max_subscriptions: 2}", env={})
    assert config.server == ServerConfig(outbox_messages=8, max_subscriptions=2)
    with pytest.raises(ConfigError, match="server: Object contains unknown field `bind`"):
        Config.parse("server: {bind: '127.0.0.1:8000'}", env={})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            "server: {outbox_messages: 4, recovery_max_messages: 5}",
            "server.recovery_max_messages: must not exceed outbox",
        ),
        ("channels: [{match: 'a*'}, {match: 'ab*'}]", "channels[1] is never used"),
        ("channels: [{match: a}, {match: a}]", "two channel rules match 'a'"),
        ("broker: {kind: memory, url: 'redis://127.0.0.1'}", "url is for kind: redis"),
    ],
)
def test_the_engine_refuses_what_cannot_work(document: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Config.parse(document, env={})


def test_an_extension_reads_the_same_file_with_its_own_secrets() -> None:
    config = WithSecret.parse(
        "vault: {token: '${TOKEN}'}\nchannels: [{match: news}]", env={"TOKEN": "t0ken"}
    )
    assert isinstance(config, WithSecret)
    assert config.vault == {"token": "t0ken"}
    assert config.channels == [ChannelRule(match="news")]
    assert "t0ken" not in config.dump()
    with pytest.raises(ConfigError, match=r"vault.token: write the token as a \$\{VAR\}"):
        WithSecret.parse("vault: {token: t0ken}", env={})


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cannot read /nonexistent/clarion\.yaml"):
        Config.load("/nonexistent/clarion.yaml")
