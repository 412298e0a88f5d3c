from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main

DEPLOY_EXAMPLE = str(Path(__file__).parents[2] / "deploy" / "channels.yaml")


def test_check_prints_the_resolved_config_without_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLARION_API_KEY", "top-secret")
    assert main(["check", DEPLOY_EXAMPLE]) == 0
    out, err = capsys.readouterr()
    assert "match: prices:*" in out
    assert "slow_consumer: latest" in out
    assert "top-secret" not in out
    assert err == f"{DEPLOY_EXAMPLE}: OK\n"


def test_check_reports_the_path_of_a_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("channels:\n  - match: a\n  - match: b\n    history: {size: many}\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"clarion: error: {path}: channels[1].history.size: Expected `int`, got `str`\n"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            "channels:\n  - match: '*'\n  - match: 'user:*'\n    subscribe: owner\n",
            'channels[1] is never used: channels[0] ("*") matches every name it matches',
        ),
        (
            "auth: {required: true, secret: '${CLARION_TEST_SECRET}'}\n",
            "auth.required is set but server.api_keys is empty, so the HTTP API would let "
            "anyone in: set server.api_keys, or server.api_open: true to declare the API open "
            "on purpose",
        ),
    ],
    ids=["shadowed-rule", "required-auth-open-api"],
)
def test_check_and_serve_refuse_an_access_hole(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    document: str,
    message: str,
) -> None:
    monkeypatch.setenv("CLARION_TEST_SECRET", "x" * 64)
    path = tmp_path / "holes.yaml"
    path.write_text(document)
    for argv in (["check", str(path)], ["serve", "--config", str(path)]):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"clarion: error: {path}: {message}\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "auth: cannot read the key file: [Errno 2] No such file or directory"),
        (b"{]", "auth.jwks_file: not a JSON Web Key Set: JSON is malformed"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "auth.jwks_file: no public signing key"),
    ],
    ids=["missing", "not-json", "only-a-secret-key"],
)
def test_check_reads_the_jwks_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    jwks = tmp_path / "jwks.json"
    if content is not None:
        jwks.write_bytes(content)
    path = tmp_path / "auth.yaml"
    path.write_text(f"auth: {{algorithms: [ES256], jwks_file: {jwks}}}\n")
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"clarion: error: {message}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["serve", "--workers", "2"],
            "--workers 2: the memory broker keeps channels inside one process",
        ),
        (["serve", "--workers", "0"], "--workers must be at least 1"),
        (["serve", "--bind", "nowhere"], "--bind: 'nowhere' must look like HOST:PORT"),
        (["serve", "--config", "/nonexistent.yaml"], "cannot read /nonexistent.yaml"),
    ],
    ids=["workers", "zero-workers", "bind", "missing-config"],
)
def test_serve_refuses_bad_options_before_starting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
