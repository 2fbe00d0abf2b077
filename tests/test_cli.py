"""The command line: `chatmesh up`, `chatmesh token` and `chatmesh chat` in a pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

from chatmesh.cli import main
from tests.conftest import small_topology

CHATMESH = [sys.executable, "-m", "chatmesh", "--log-level", "WARNING"]


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"chatmesh up exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.1)


def chat(run_dir: Path, user: str, region: str, stdin: str) -> list[dict]:  # type: ignore[type-arg]
    result = subprocess.run(
        [
            *CHATMESH,
            "chat",
            "--user",
            user,
            "--region",
            region,
            "--run-dir",
            str(run_dir),
        ],
        input=stdin.encode(),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_up_then_chat_across_regions_in_a_pipe(tmp_path: Path) -> None:
    topology_file = tmp_path / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(small_topology("cli-mesh").model_dump()))
    run_dir = tmp_path / "run"
    up = subprocess.Popen(
        [*CHATMESH, "up", "--topology", str(topology_file), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_file(run_dir / "mesh.json", up, 90)

        sent = chat(
            run_dir, "alice", "eu-west", "bob: hello from the terminal\nnot a message\n"
        )
        received = chat(run_dir, "bob", "us-east", "")

        kinds = [event["type"] for event in sent]
        assert kinds[0] == "hello"
        assert "accepted" in kinds
        assert "committed" in kinds
        assert any(e["type"] == "error" and e["code"] == "usage" for e in sent)
        messages = [e["message"] for e in received if e["type"] == "message"]
        assert [m["content"] for m in messages] == ["hello from the terminal"]
        assert messages[0]["sender"] == "alice"
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)

    assert up.returncode == 0
    assert b"is up" in out
    children = [p for p in (run_dir / "logs").iterdir()]
    assert len(children) == 6
    _assert_no_process_uses(run_dir)


def _assert_no_process_uses(run_dir: Path) -> None:
    """Every process the mesh started has exited: none still names the run dir."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(run_dir).encode() not in cmdline, (
            f"process {pid} still runs: {cmdline!r}"
        )


def test_token_command_prints_verifiable_token(tmp_path: Path) -> None:
    from core.tokens import KeyStore, PublicKeys, verify_token
    from topology.launcher import RunLayout

    layout = RunLayout(tmp_path)
    layout.topology.write_text(small_topology("token-mesh").model_dump_json())
    KeyStore(layout.token_private_keys, layout.token_public_keys).ensure()
    result = subprocess.run(
        [*CHATMESH, "token", "alice", "--run-dir", str(tmp_path)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode()
    keys = PublicKeys(layout.token_public_keys)
    token = result.stdout.decode().strip()
    assert verify_token(keys, "token-mesh", token) == "alice"


def test_keys_rotate_keeps_previous_key(tmp_path: Path) -> None:
    from core.tokens import KeyStore, PublicKeys, mint_token, verify_token
    from topology.launcher import RunLayout

    layout = RunLayout(tmp_path)
    store = KeyStore(layout.token_private_keys, layout.token_public_keys)
    first = store.ensure()
    old_token = mint_token(first, "alice", "mesh")
    keys = PublicKeys(layout.token_public_keys)

    result = subprocess.run(
        [*CHATMESH, "keys", "rotate", "--run-dir", str(tmp_path)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode()
    listed = subprocess.run(
        [*CHATMESH, "keys", "list", "--run-dir", str(tmp_path)],
        capture_output=True,
        timeout=30,
    )

    newest = store.signing_key()
    assert newest.kid != first.kid
    assert listed.stdout.decode().split() == [newest.kid, first.kid]
    assert verify_token(keys, "mesh", old_token) == "alice"
    assert verify_token(keys, "mesh", mint_token(newest, "bob", "mesh")) == "bob"
    private_files = sorted(p.name for p in layout.token_private_keys.iterdir())
    assert private_files == [f"{newest.kid}.pem"]
    assert (layout.token_private_keys / f"{newest.kid}.pem").stat().st_mode & 0o777 == (
        0o600
    )


def test_chat_without_mesh_explains(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *CHATMESH,
            "chat",
            "--user",
            "alice",
            "--region",
            "eu-west",
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"no running mesh found" in result.stderr


def test_up_rejects_invalid_topology(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhub: {nodes: []}\nregions: []\n")
    result = subprocess.run(
        [*CHATMESH, "up", "--topology", str(bad)], capture_output=True, timeout=30
    )
    assert result.returncode != 0
    assert b"hub.nodes" in result.stderr
    assert b"regions" in result.stderr


def test_token_rejects_invalid_user_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["token", "Alice", "--run-dir", str(tmp_path)])

    assert result.exit_code == 2
    assert "invalid user name 'Alice'" in result.output
    assert "lowercase" in result.output


def test_unknown_log_level_rejected_without_traceback() -> None:
    result = CliRunner().invoke(main, ["--log-level", "LOUD", "status"])

    assert result.exit_code == 2
    assert "'LOUD' is not one of" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
