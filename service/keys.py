"""API keys of the inference routes: which keys exist, stored as SHA-256 digests only.

``python -m service.keys new ID [--append FILE]`` makes a key: it prints the key once (give
it to the client; it is stored nowhere) and the line ``ID:<sha256 hex>`` that the key file
(``NNSERVE_API_KEYS_FILE``) or ``NNSERVE_API_KEYS`` holds instead of it.

Why SHA-256 and not bcrypt/argon2: key stretching makes guessing a *low-entropy* secret (a
password) from its stored hash slow, at ~50-100 ms of CPU per check by design, on every
request here. A key from :func:`new_key` holds 256 random bits: no hash speed makes guessing
it from its digest feasible, so a fast hash loses nothing and costs ~1 µs per request.

Why a dict lookup on the digest is constant-time enough: the lookup's timing may depend on
how the *digest* of the presented key compares with the stored digests (the hash table's
bucket, a memcmp), never on the key's own bytes. To use such a leak byte by byte an attacker
would have to choose keys whose digests extend a matching prefix, which SHA-256's preimage
resistance rules out; and even a whole leaked digest is what the key file holds, which is
safe to leak for a 256-bit key. (Python also salts the table's hash of bytes per process.)
A ``hmac.compare_digest`` against every key would cost a loop per request for nothing more.

Nothing here knows HTTP: the edge (``service.http.auth``) hands the presented key over.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger("nnserve.keys")

#: What every key starts with, so that secret scanners and people recognise one.
KEY_PREFIX = "nns_"
#: Key ids name a key in logs and in a metric label: short, and safe in both.
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
#: The metric and log labels of refused requests: no key, or one that matches none.
MISSING, INVALID = "missing", "invalid"
#: Seconds between checks of the key file for changes.
RELOAD_CHECK_S = 1.0


class KeyFileError(ValueError):
    """A key list that cannot be used. Its message names the place (file and line, or entry
    of NNSERVE_API_KEYS), never the content: a line may hold a key pasted by mistake."""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def is_admin(token: str, authorization: str) -> bool:
    """Whether an ``Authorization`` value (HTTP header or gRPC metadata) is ``Bearer <token>``,
    the management token; compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def parse(text: str, source: str, separator: str = "\n") -> dict[str, bytes]:
    """``key_id:sha256_hex`` entries (``#`` starts a comment) → key id → digest."""
    keys: dict[str, bytes] = {}
    seen: dict[bytes, str] = {}
    unit = "line" if separator == "\n" else "entry"
    for number, raw in enumerate(text.split(separator), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        where = f"{source}, {unit} {number}"
        key_id, colon, value = (part.strip() for part in entry.partition(":"))
        value = value.lower()
        if not colon or not KEY_ID.fullmatch(key_id):
            raise KeyFileError(
                f"{where}: expected key_id:sha256_hex, the id of letters, digits, '.', '_', "
                "'-' (at most 64)"
            )
        if key_id in (MISSING, INVALID):
            raise KeyFileError(f"{where}: {key_id!r} is reserved (a metric label)")
        if not _HEX_DIGEST.fullmatch(value):
            hint = (
                "holds a key itself: only its SHA-256 belongs here"
                if value.startswith(KEY_PREFIX.lower())
                else "is not a SHA-256 digest (64 hex digits)"
            )
            raise KeyFileError(f"{where}: the value of key {key_id!r} {hint}")
        if key_id in keys:
            raise KeyFileError(f"{where}: key id {key_id!r} appears twice")
        found = bytes.fromhex(value)
        if found in seen:
            raise KeyFileError(f"{where}: key {key_id!r} is the same key as {seen[found]!r}")
        keys[key_id], seen[found] = found, key_id
    return keys


def _read(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc}") from None
    return parse(text, str(path))


def _merge(
    listed: dict[str, bytes], from_file: dict[str, bytes], refused: Collection[bytes]
) -> dict[bytes, str]:
    by_digest: dict[bytes, str] = {}
    for key_id, value in (*listed.items(), *from_file.items()):
        if key_id in listed and from_file.get(key_id) is not None:
            raise KeyFileError(f"key id {key_id!r} is both in NNSERVE_API_KEYS and in the file")
        if value in by_digest:
            raise KeyFileError(f"key {key_id!r} is the same key as {by_digest[value]!r}")
        if value in refused:
            raise KeyFileError(
                f"key {key_id!r} is NNSERVE_ADMIN_TOKEN: API keys and the management token "
                "must differ"
            )
        by_digest[value] = key_id
    return by_digest


class KeyRing:
    """The API keys in force: NNSERVE_API_KEYS (fixed) and the key file, which is re-read when
    it changes (checked at most once a second, on a request). A file that cannot be read or
    parsed then is logged and the keys loaded before stay: a key file being replaced must not
    lock every client out, and a key is revoked by removing its line."""

    def __init__(
        self,
        listed: str | None = None,
        file: Path | None = None,
        refused: Collection[bytes] = (),
    ) -> None:
        """Raises :class:`KeyFileError` for an unusable list or file. ``refused``: digests
        that must not be API keys (the management token's)."""
        self.file = file
        self._listed = parse(listed, "NNSERVE_API_KEYS", ",") if listed else {}
        self._refused = frozenset(refused)
        self._signature = self._stat()
        self._by_digest = _merge(self._listed, _read(file) if file else {}, self._refused)
        self._next_check = time.monotonic() + RELOAD_CHECK_S
        if not self._by_digest:
            log.warning("API keys are on but none is configured: every protected call gets 401")

    @property
    def ids(self) -> list[str]:
        return list(self._by_digest.values())

    def identify(self, key: bytes) -> str | None:
        """The id of this key, or None when it is not one of ours."""
        if self.file is not None and (now := time.monotonic()) >= self._next_check:
            self._next_check = now + RELOAD_CHECK_S
            self.reload_if_changed()
        return self._by_digest.get(hashlib.sha256(key).digest())

    def reload_if_changed(self) -> bool:
        signature = self._stat()
        if signature == self._signature or self.file is None:
            return False
        self._signature = signature  # a broken file is reported once, not every second
        try:
            self._by_digest = _merge(self._listed, _read(self.file), self._refused)
        except KeyFileError as exc:
            log.error("API keys not reloaded, the %d keys before stay: %s", len(self.ids), exc)
            return False
        log.info("API keys reloaded from %s: %s", self.file, ", ".join(self.ids) or "none")
        return True

    def _stat(self) -> tuple[int, int, int] | None:
        if self.file is None:
            return None
        try:  # follows symlinks: a Kubernetes Secret volume swaps its files by a link
            st = os.stat(self.file)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino


# -- python -m service.keys ------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.keys", description="API keys of the inference routes"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key: print it once, and its line for the file")
    new.add_argument("key_id", help="its name in logs and metrics (letters, digits, . _ -)")
    new.add_argument("--append", type=Path, metavar="FILE", help="add the line to this key file")
    args = parser.parse_args(argv)
    if not KEY_ID.fullmatch(args.key_id):
        parser.error(f"key id {args.key_id!r}: letters, digits, '.', '_', '-', at most 64")
    if args.key_id in (MISSING, INVALID):
        parser.error(f"key id {args.key_id!r} is reserved (a metric label)")
    key = new_key()
    line = f"{args.key_id}:{digest(key.encode()).hex()}"
    if args.append is None:
        print(f"key:  {key}\n      give it to the client: it is shown once and stored nowhere")
        print(f"line: {line}\n      add it to NNSERVE_API_KEYS_FILE (or to NNSERVE_API_KEYS)")
        return 0
    try:
        existing = args.append.read_text(encoding="utf-8") if args.append.exists() else ""
        parse(existing + "\n" + line, str(args.append))
        with args.append.open("a", encoding="utf-8") as file:
            file.write(("" if existing.endswith("\n") or not existing else "\n") + line + "\n")
    except (OSError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(key)  # the key alone on stdout, for a script to hand on
    print(f"added {args.key_id!r} to {args.append}; the key is shown once", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
