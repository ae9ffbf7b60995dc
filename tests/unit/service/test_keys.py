"""API keys: the key file and NNSERVE_API_KEYS (digests only), the key ring and its reload,
``python -m service.keys new``, and the settings that turn access control on."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import keys
from service.keys import KeyFileError, KeyRing, digest, new_key, parse
from service.settings import Settings
from tests.support.paths import ROOT

ALICE, BOB = new_key(), new_key()


def line(key_id: str, key: str) -> str:
    return f"{key_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def test_a_new_key_is_256_random_bits_with_a_prefix() -> None:
    assert re.fullmatch(r"nns_[A-Za-z0-9_-]{43}", ALICE)
    assert ALICE != BOB
    assert digest(ALICE.encode()) == hashlib.sha256(ALICE.encode()).digest()


def test_the_file_format_comments_blank_lines_and_case() -> None:
    text = f"""# who may call
{line("alice", ALICE)}   # her laptop

  {line("bob", BOB).upper().replace("BOB:", "bob:")}
"""
    assert parse(text, "keys.txt") == {
        "alice": digest(ALICE.encode()),
        "bob": digest(BOB.encode()),
    }
    listed = f"{line('alice', ALICE)}, {line('bob', BOB)},"
    assert list(parse(listed, "NNSERVE_API_KEYS", ",")) == ["alice", "bob"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "keys.txt, line 1: expected key_id:sha256_hex"),
        ("al ice:" + "0" * 64, "line 1: expected key_id:sha256_hex"),
        ("# ok\n" + "missing:" + "0" * 64, "line 2: 'missing' is reserved"),
        ("alice:abc", "is not a SHA-256 digest"),
        (f"alice:{ALICE}", "holds a key itself: only its SHA-256 belongs here"),
        (f"{line('alice', ALICE)}\n{line('alice', BOB)}", "line 2: key id 'alice' appears twice"),
        (f"{line('alice', ALICE)}\n{line('bob', ALICE)}", "key 'bob' is the same key as 'alice'"),
    ],
)
def test_a_bad_line_is_named_by_number_and_never_shown(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=re.escape(message)) as caught:
        parse(text, "keys.txt")
    assert ALICE not in str(caught.value) and ALICE.lower() not in str(caught.value)


def test_the_ring_identifies_keys_from_the_list_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text(line("bob", BOB) + "\n")
    ring = KeyRing(line("alice", ALICE), file)
    assert ring.ids == ["alice", "bob"]
    assert ring.identify(ALICE.encode()) == "alice"
    assert ring.identify(BOB.encode()) == "bob"
    assert ring.identify(b"nns_wrong") is None
    assert ring.identify(digest(ALICE.encode()).hex().encode()) is None  # the digest is no key
    file.write_text(line("alice", BOB) + "\n")
    with pytest.raises(KeyFileError, match="'alice' is both in NNSERVE_API_KEYS and in the file"):
        KeyRing(line("alice", ALICE), file)
    with pytest.raises(KeyFileError, match="cannot read the API key file"):
        KeyRing(None, tmp_path / "nowhere")


def test_the_management_token_is_refused_as_an_api_key() -> None:
    with pytest.raises(KeyFileError, match="'alice' is NNSERVE_ADMIN_TOKEN"):
        KeyRing(line("alice", ALICE), None, refused=[digest(ALICE.encode())])


def test_the_file_is_reloaded_when_it_changes_and_kept_when_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(keys, "RELOAD_CHECK_S", 0.0)
    file = tmp_path / "keys"
    file.write_text(line("alice", ALICE) + "\n")
    ring = KeyRing(None, file)
    ring._next_check = 0.0

    def rewrite(text: str) -> None:
        file.write_text(text)
        stamp = file.stat().st_mtime_ns + 1_000_000_000  # a later mtime, whatever the clock
        os.utime(file, ns=(stamp, stamp))

    rewrite(line("bob", BOB) + "\n")  # alice revoked, bob added
    assert ring.identify(ALICE.encode()) is None
    assert ring.identify(BOB.encode()) == "bob"
    with caplog.at_level(logging.INFO, logger="nnserve.keys"):
        rewrite(f"bob:{BOB}\n")  # broken: a key where its digest belongs
        assert ring.identify(BOB.encode()) == "bob"  # the keys before stay
        file.unlink()  # being replaced
        assert ring.identify(BOB.encode()) == "bob"
    assert "API keys not reloaded, the 1 keys before stay" in caplog.text
    assert BOB not in caplog.text
    rewrite(line("alice", ALICE) + "\n")
    assert ring.identify(ALICE.encode()) == "alice"
    assert ring.identify(BOB.encode()) is None


def test_the_file_is_checked_at_most_once_a_second(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text(line("alice", ALICE) + "\n")
    ring = KeyRing(None, file)
    file.write_text(line("bob", BOB) + "\n")
    assert ring.identify(BOB.encode()) is None  # not looked at yet
    ring._next_check = 0.0  # a second later
    assert ring.identify(BOB.encode()) == "bob"


def run_keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.keys", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_new_prints_the_key_once_and_its_line() -> None:
    done = run_keys("new", "alice")
    assert done.returncode == 0, done.stderr
    key = re.search(r"key:\s+(\S+)", done.stdout)
    entry = re.search(r"line:\s+(\S+)", done.stdout)
    assert key and entry
    assert done.stdout.count(key[1]) == 1
    assert entry[1] == line("alice", key[1])
    assert KeyRing(entry[1]).identify(key[1].encode()) == "alice"


def test_new_appends_to_a_key_file_and_refuses_a_taken_id(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text("# keys\n" + line("bob", BOB))  # no final newline
    done = run_keys("new", "alice", "--append", str(file))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("nns_") and key not in done.stderr
    ring = KeyRing(None, file)
    assert ring.identify(key.encode()) == "alice" and ring.identify(BOB.encode()) == "bob"
    again = run_keys("new", "alice", "--append", str(file))
    assert again.returncode == 2 and "key id 'alice' appears twice" in again.stderr
    assert KeyRing(None, file).ids == ["bob", "alice"]
    for bad in ("missing", "a b", "x" * 65):
        assert run_keys("new", bad).returncode == 2


def test_settings_turn_keys_on_and_refuse_unusable_ones(tmp_path: Path) -> None:
    assert Settings().key_ring() is None
    file = tmp_path / "keys"
    file.write_text(line("alice", ALICE) + "\n")
    ring = Settings(api_keys_file=file, api_keys=line("bob", BOB)).key_ring()
    assert ring is not None and ring.ids == ["bob", "alice"]
    with pytest.raises(ValidationError, match="NNSERVE_ADMIN_TOKEN: API keys and the"):
        Settings(api_keys_file=file, admin_token=ALICE)
    with pytest.raises(ValidationError, match="cannot read the API key file"):
        Settings(api_keys_file=tmp_path / "nowhere")


def test_an_invalid_settings_error_shows_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNSERVE_ADMIN_TOKEN", "s3cret-admin-token")
    monkeypatch.setenv("NNSERVE_API_KEYS", f"alice:{ALICE}")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "holds a key itself" in str(caught.value)
    assert "s3cret-admin-token" not in str(caught.value) and ALICE not in str(caught.value)
