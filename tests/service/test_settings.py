from __future__ import annotations

from pathlib import Path

import pytest

from channels.config import ChannelRule, History
from channels.errors import ConfigError
from service.settings import ServerSettings, Settings, parse_bind

DEPLOY_EXAMPLE = Path(__file__).parents[2] / "deploy" / "channels.yaml"


def test_default_config_serves_every_channel_on_loopback() -> None:
    config = Settings()
    assert config.server.bind == "127.0.0.1:8000"
    assert config.broker.kind == "memory"
    assert config.channels == [ChannelRule(match="*")]
    assert config.channels[0].publish is True
    assert config.server.api_keys == []


def test_empty_document_is_the_default() -> None:
    assert Settings.parse("", env={}) == Settings()
    assert Settings.load(None) == Settings()


def test_full_document_is_decoded() -> None:
    config = Settings.parse(
        """
server:
  bind: "[::1]:9000"
  websocket_path: /live
  outbox_messages: 64
  slow_consumer: drop_oldest
  api_keys: ["${KEY_A}", "${KEY_B}"]
channels:
  - match: "prices:*"
    publish: false
    history: {size: 100, ttl_seconds: 30}
    max_message_bytes: 512
    slow_consumer: latest
  - match: lobby
""",
        env={"KEY_A": "alpha", "KEY_B": "beta"},
    )
    assert config.server.bind == "[::1]:9000"
    assert config.server.websocket_path == "/live"
    assert config.server.api_keys == ["alpha", "beta"]
    assert config.channels[0] == ChannelRule(
        match="prices:*",
        publish=False,
        history=History(size=100, ttl_seconds=30),
        max_message_bytes=512,
        slow_consumer="latest",
    )
    assert config.channels[1].slow_consumer is None


BAD_DOCUMENTS = [
    (
        "channels: [{match: a}, {match: b, history: {size: -1}}]",
        "channels[1].history.size: Expected `int` >= 0",
    ),
    ("channels: [{match: a, histroy: {}}]", "channels[0]: Object contains unknown field `histroy`"),
    ("channels: [{match: 3}]", "channels[0].match: Expected `str`, got `int`"),
    ("channels: [{publish: true}]", "channels[0]: Object missing required field `match`"),
    ("channels: [{match: 'a b'}]", "channels[0]: match 'a b' may hold only"),
    ("channels: [{match: a}, {match: a}]", "two channel rules match 'a'"),
    (
        "channels: [{match: a, slow_consumer: never}]",
        "channels[0].slow_consumer: Invalid enum value 'never'",
    ),
    ("server: {outbox_messages: 0}", "server.outbox_messages: Expected `int` >= 1"),
    ("server: {listen_backlog: 0}", "server.listen_backlog: Expected `int` >= 1"),
    ("server: {listen_backlog: 65536}", "server.listen_backlog: Expected `int` <= 65535"),
    ("server: {bind: localhost}", "server.bind: 'localhost' must look like HOST:PORT"),
    ("server: {bind: '127.0.0.1:70000'}", "must look like HOST:PORT"),
    ("server: {bind: '224.0.0.1:8000'}", "224.0.0.1 is a multicast address"),
    ("server: {bind: '[ff02::1]:8000'}", "ff02::1 is a multicast address"),
    ("server: {bind: '255.255.255.255:8000'}", "255.255.255.255 is a broadcast address"),
    ("server: {bind: '0xe0000001:8000'}", "0xe0000001 is a multicast address"),
    ("server: {bind: '224.1:8000'}", "224.1 is a multicast address"),
    ("server: {bind: '4294967295:8000'}", "4294967295 is a broadcast address"),
    ("server: {bind: '[::ffff:224.0.0.1]:8000'}", "::ffff:224.0.0.1 is a multicast address"),
    ("server: {websocket_path: ws}", "server.websocket_path: 'ws' must start with '/'"),
    ("server: {websocket_path: /health}", "is taken by the HTTP API"),
    ("server: {outbox_messages: 10, recovery_max_messages: 11}", "must not exceed outbox_messages"),
    ("server: {api_keys: [hunter2]}", "server.api_keys[0]: write the key as a ${VAR} reference"),
    (
        "server: {api_keys: ['${MISSING}']}",
        "server.api_keys[0]: environment variable MISSING is not set",
    ),
    ("server: {api_keys: ['${EMPTY}']}", "server: an API key is empty"),
    ("broker: {kind: nats}", "broker.kind: Invalid enum value 'nats'"),
    ("channels: [{match: a, subscribe: owner}]", "owner access needs a match with one '*'"),
    ("channels: [{match: 'a:*', subscribe: all}]", "channels[0].subscribe: Invalid enum value"),
    ("server: {allowed_origins: example.com}", "server.allowed_origins: Expected `array`"),
    ("auth: {secret: plain}", "auth.secret: write the secret as a ${VAR} reference"),
    ("auth: {algorithms: [none], secret: '${SHORT}'}", "auth.algorithms[0]: Invalid enum"),
    ("auth: {algorithms: []}", "auth.algorithms: Expected `array` of length >= 1"),
    ("auth: {secret: '${SHORT}'}", "auth.secret: HS256 needs a secret of at least 32 bytes"),
    ("auth: {algorithms: [RS256]}", "auth: RS*/ES* algorithms need public_key_file or jwks"),
    (
        "auth: {algorithms: [ES256], public_key_file: k.pem, jwks_file: k.json}",
        "auth: use public_key_file or jwks_file, not both",
    ),
    (
        "auth: {secret: '${LONG}', jwks_file: k.json}",
        "auth: public_key_file and jwks_file are for RS*/ES* algorithms",
    ),
    ("server: {ping_interval_seconds: 0}", "server.ping_interval_seconds: Expected `float` > 0"),
    ("server: {handshake_timeout_seconds: -1}", "server.handshake_timeout_seconds: Expected"),
    ("auth: {required: true}", "auth: HS* algorithms need a secret"),
    (
        "auth: {algorithms: [HS256, RS256], secret: '${SHORT}'}",
        "auth.algorithms: use HS* or RS*/ES* algorithms, not both",
    ),
    ("broker: {url: 'redis://127.0.0.1'}", "broker: url is for kind: redis"),
    ("broker: {kind: redis, url: 'http://x'}", "broker: url must start with redis://"),
    ("broker: {kind: redis, prefix: 'a b'}", "broker.prefix: Expected `str` matching"),
    ("broker: {kind: redis, timeout_seconds: 0}", "broker.timeout_seconds: Expected `float` > 0"),
    (
        "auth: {required: true, secret: '${LONG}'}",
        "auth.required is set but server.api_keys is empty, so the HTTP API would let anyone "
        "in: set server.api_keys, or server.api_open: true",
    ),
    ("server: {api_open: true, api_keys: ['${LONG}']}", "api_open: true and api_keys both set"),
    (
        "channels: [{match: '*'}, {match: news}, {match: 'user:*', subscribe: owner}]",
        """channels[2] is never used: channels[0] ("*") matches every name it matches""",
    ),
    (
        "channels: [{match: 'chat:*'}, {match: 'chat:*:typing'}]",
        """channels[1] is never used: channels[0] ("chat:*") matches every name it matches""",
    ),
    (
        "channels: [{match: '*:*'}, {match: 'a*:b*'}]",
        """channels[1] is never used: channels[0] ("*:*")""",
    ),
    (
        "server: {channel_name_max_length: 8}\nchannels: [{match: 'short'}, {match: 'user:abcd*'}]",
        "channels[1] is never used: it matches only names longer than "
        "server.channel_name_max_length (8)",
    ),
    # Redis takes times as whole milliseconds: infinity would fail every publish.
    (
        "server: {idempotency_window_seconds: .inf}",
        "server.idempotency_window_seconds: Expected `float` <= 315360000.0",
    ),
    (
        "channels: [{match: '*', history: {size: 1, ttl_seconds: .inf}}]",
        "channels[0].history.ttl_seconds: Expected `float` <= 315360000.0",
    ),
    ("nonsense: 1", "Object contains unknown field `nonsense`"),
    ("[1, 2]", "Expected `object`, got `array`"),
    ("server: {bind: [", "not valid YAML"),
]


@pytest.mark.parametrize(
    ("document", "message"), BAD_DOCUMENTS, ids=[message[:40] for _, message in BAD_DOCUMENTS]
)
def test_bad_document_names_the_path(document: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.parse(
            document, env={"EMPTY": "", "SHORT": "x" * 20, "LONG": "x" * 64}, source="test.yaml"
        )
    assert str(caught.value).startswith("test.yaml: ")
    assert message in str(caught.value)
    assert caught.value.code == 10


@pytest.mark.parametrize(
    "rules",
    [
        "[{match: 'user:*', subscribe: owner}, {match: '*'}]",
        "[{match: 'chat:*:typing'}, {match: 'chat:*'}]",
        "[{match: 'a*'}, {match: '*b'}]",
        "[{match: '*:x'}, {match: 'x:*'}]",
        "[{match: '*'}, {match: 'user:bob'}]",
    ],
    ids=["catch-all-last", "narrow-first", "overlapping", "crossing", "exact-after-catch-all"],
)
def test_rules_that_can_apply_are_accepted(rules: str) -> None:
    # Each later rule has a name no earlier pattern matches (an exact match always wins).
    assert Settings.parse(f"channels: {rules}", env={}).channels


def test_auth_required_with_an_api_declared_open_is_accepted() -> None:
    document = "auth: {required: true, secret: '${LONG}'}\nserver: {api_open: true}"
    config = Settings.parse(document, env={"LONG": "x" * 64})
    assert config.server.api_open
    assert config.server.api_keys == []


def test_env_references_work_in_any_string() -> None:
    config = Settings.parse(
        "server: {bind: '${HOST}:8123', websocket_path: '/${PATH_NAME}'}",
        env={"HOST": "127.0.0.1", "PATH_NAME": "live"},
    )
    assert config.server.bind == "127.0.0.1:8123"
    assert config.server.websocket_path == "/live"


def test_load_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.yaml"):
        Settings.load(tmp_path / "nope.yaml")


def test_load_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {api_keys: ['${CLARION_TEST_KEY}']}")
    monkeypatch.setenv("CLARION_TEST_KEY", "s3cret")
    assert Settings.load(path).server.api_keys == ["s3cret"]


def test_dump_redacts_api_keys() -> None:
    config = Settings(server=ServerSettings(api_keys=["s3cret"]))
    dumped = (config).dump()
    assert "s3cret" not in dumped
    assert "<redacted>" in dumped
    assert Settings.parse((Settings()).dump(), env={}) == Settings()


def test_dump_redacts_the_token_secret() -> None:
    secret = "s" * 40
    config = Settings.parse("auth: {secret: '${S}'}", env={"S": secret})
    assert config.auth is not None
    assert config.auth.secret == secret
    dumped = (config).dump()
    assert secret not in dumped
    assert "secret: <redacted>" in dumped


def test_dump_redacts_the_redis_password() -> None:
    config = Settings.parse(
        "broker: {kind: redis, url: 'redis://:${PW}@127.0.0.1:6380/1'}", env={"PW": "s3cret"}
    )
    assert config.broker.redis_url == "redis://:s3cret@127.0.0.1:6380/1"
    dumped = (config).dump()
    assert "s3cret" not in dumped
    assert "redis://:<redacted>@127.0.0.1:6380/1" in dumped


def test_deploy_example_is_valid_and_uses_every_policy() -> None:
    config = Settings.load(DEPLOY_EXAMPLE, env={"CLARION_API_KEY": "example"})
    assert {rule.slow_consumer for rule in config.channels} >= {"drop_oldest", "latest"}
    assert any(rule.history.size for rule in config.channels)
    assert any(not rule.publish for rule in config.channels)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), ("[::1]:80", ("::1", 80)), ("h:0", ("h", 0))],
)
def test_parse_bind(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected
