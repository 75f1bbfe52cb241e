"""Encryption at rest: AES-256-GCM around the stored session envelope (extra ``fastsess[crypto]``).

A store built with ``encryption=Encryption([key, ...])`` writes, instead of the
plain envelope (``serializers`` module doc)::

    b"FS" | 0x02 | key id (4 bytes) | nonce (12 bytes) | AES-256-GCM(plain envelope) + tag (16 bytes)

* the key is the first of the list; every key of the list decrypts (rotation);
* the nonce is 12 fresh random bytes (``os.urandom``) per write;
* the associated data is the first 7 bytes above followed by the session's Redis key
  (``prefix + id``, UTF-8): a ciphertext copied or moved under another id, another
  prefix or with another key id fails authentication;
* the key id is the first 4 bytes of HMAC-SHA256(key, "fastsess encryption key id"):
  it names the key without revealing it and does not change when the list is reordered.

Whatever fails (tampered, truncated or foreign bytes, a key id that is not in the list,
a plain envelope when ``accept_plaintext`` is off) is ``SessionCorrupt``; its message
never holds a key, the session id or the data.  Keys are never logged and never in a
``repr``; an ``Encryption`` refuses to be pickled.

Cost: 35 bytes per session and one AES-GCM pass each way (see bench/README.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConfigError, SessionCorrupt, SessionTooLarge
from .serializers import ENCRYPTED_ENVELOPE_VERSION, ENVELOPE_VERSION, MAGIC, Serializer
from .session import Session

if TYPE_CHECKING:  # pragma: no cover
    from ._core.keys import KeySpace

KEY_SIZE = 32  # AES-256
NONCE_SIZE = 12  # 96 bits, GCM's native nonce size
TAG_SIZE = 16
KEY_ID_SIZE = 4
PREFIX = MAGIC + bytes((ENCRYPTED_ENVELOPE_VERSION,))
HEADER_SIZE = len(PREFIX) + KEY_ID_SIZE  # authenticated, in clear
OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE  # 35 bytes more than the plain envelope
_PLAIN_PREFIX = MAGIC + bytes((ENVELOPE_VERSION,))
_KEY_ID_LABEL = b"fastsess encryption key id"
_PRINTABLE = frozenset(range(0x20, 0x7F))


def key_id(key: bytes) -> str:
    """The id a key is recorded under in the envelope: 8 hex digits (4 bytes of
    HMAC-SHA256(key, a fixed label)), safe to log: it does not reveal the key.

    Raises:
        ConfigError: ``key`` is not 32 bytes (see ``Encryption``).
    """
    return _key_id(_check_key(key, 1)).hex()


def _key_id(key: bytes) -> bytes:
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_SIZE]


def _check_key(key: Any, n: int) -> bytes:
    """``key`` as bytes if it is a usable AES-256 key; the message names it by position only."""
    if not isinstance(key, (bytes, bytearray)):
        raise ConfigError(
            f"encryption key #{n} must be bytes, not {type(key).__name__} "
            "(decode a base64 text key first, or use Encryption.from_base64)"
        )
    if len(key) != KEY_SIZE:
        raise ConfigError(f"encryption key #{n} is {len(key)} bytes long; AES-256-GCM needs exactly {KEY_SIZE} (Encryption.generate_key())")
    if _PRINTABLE.issuperset(key):
        raise ConfigError(
            f"encryption key #{n} is printable text, not {KEY_SIZE} random bytes: a password or an encoded key? "
            "(decode base64 with Encryption.from_base64, or make one with Encryption.generate_key())"
        )
    return bytes(key)


class Encryption:
    """AES-256-GCM keys for encrypting sessions at rest: ``store(..., encryption=Encryption([k1, k2]))``.

    Args:
        keys: one or more 32-byte keys (raw random bytes, not text).  The first
            encrypts every write; all of them decrypt.  Rotation: add the new key
            second, deploy everywhere, move it first, deploy, wait the longest
            session lifetime, remove the old one (docs/encryption.md).  Keep these
            keys apart from the cookie-signing secret.
        accept_plaintext: also read sessions stored without encryption (while
            turning encryption on for live sessions; each is encrypted at its next
            write).  Off by default: with it on, whoever can write to Redis can
            plant an unencrypted session.
        write_plaintext: write sessions unencrypted (and read both): the first step
            of turning encryption on, or the last of turning it off, without
            logging anyone out (docs/encryption.md).  Implies ``accept_plaintext``.

    Raises:
        ConfigError: ``cryptography`` is not installed (``pip install 'fastsess[crypto]'``),
            ``keys`` is empty or not a list, a key is not bytes, not 32 bytes long,
            printable text, or given twice.  Messages name keys by position, never
            by value.
    """

    __slots__ = ("_by_id", "_encryptor", "_header", "accept_plaintext", "key_ids", "write_plaintext")

    def __init__(self, keys: Sequence[bytes], *, accept_plaintext: bool = False, write_plaintext: bool = False) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError("encryption needs the cryptography package: pip install 'fastsess[crypto]'") from None
        given: Any = keys  # checked here, whatever the annotation says
        if not isinstance(given, (list, tuple)):
            raise ConfigError(
                f"keys must be a list of 32-byte keys (the first encrypts, all decrypt), not {type(given).__name__}"
            )
        if not given:
            raise ConfigError("keys must hold at least one 32-byte key")
        for name, flag in (("accept_plaintext", accept_plaintext), ("write_plaintext", write_plaintext)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be a bool, not {type(flag).__name__}")
        by_id: dict[bytes, Any] = {}
        ids: list[bytes] = []
        for n, key in enumerate(given, 1):
            raw = _check_key(key, n)
            kid = _key_id(raw)
            if kid in by_id:
                raise ConfigError(f"encryption keys #{ids.index(kid) + 1} and #{n} are the same key (key id {kid.hex()})")
            by_id[kid] = AESGCM(raw)
            ids.append(kid)
        self._by_id = by_id
        self._encryptor = by_id[ids[0]]
        self._header = PREFIX + ids[0]
        self.key_ids: tuple[str, ...] = tuple(k.hex() for k in ids)
        """The keys' ids (``key_id``), in the order given: the first one encrypts."""
        self.accept_plaintext = accept_plaintext or write_plaintext
        self.write_plaintext = write_plaintext

    @staticmethod
    def generate_key() -> bytes:
        """A new random 32-byte key (``secrets.token_bytes``), one ``Encryption`` accepts."""
        while True:
            key = secrets.token_bytes(KEY_SIZE)
            if not _PRINTABLE.issuperset(key):  # all printable: a 1 in 6e13 draw, refused as text
                return key

    @classmethod
    def from_base64(cls, keys: Iterable[str | bytes], *, accept_plaintext: bool = False, write_plaintext: bool = False) -> Encryption:
        """An ``Encryption`` from base64 texts (standard or URL-safe alphabet, as in
        settings files and environment variables), e.g. ``base64.b64encode(generate_key())``.

        Raises:
            ConfigError: a text that is not base64, or any reason ``Encryption`` gives.
        """
        if isinstance(keys, (str, bytes, bytearray)):
            raise ConfigError("keys must be a list of base64 texts (the first encrypts, all decrypt), not a single text")
        decoded: list[bytes] = []
        for n, text in enumerate(keys, 1):
            if not isinstance(text, (str, bytes)):
                raise ConfigError(f"encryption key #{n} must be a base64 str, not {type(text).__name__}")
            try:
                raw = text.encode("ascii") if isinstance(text, str) else text
                decoded.append(base64.b64decode(raw.strip().replace(b"-", b"+").replace(b"_", b"/"), validate=True))
            except (UnicodeEncodeError, binascii.Error, ValueError):
                raise ConfigError(f"encryption key #{n} is not valid base64") from None
        return cls(decoded, accept_plaintext=accept_plaintext, write_plaintext=write_plaintext)

    def seal(self, envelope: bytes, associated: bytes) -> bytes:
        """``envelope`` encrypted with the first key, bound to ``associated`` (the Redis key)."""
        nonce = os.urandom(NONCE_SIZE)
        header = self._header
        sealed: bytes = header + nonce + self._encryptor.encrypt(nonce, envelope, header + associated)
        return sealed

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        """The envelope ``seal`` encrypted, if ``sealed`` is authentic for ``associated``.

        Raises:
            SessionCorrupt: not an encrypted envelope, truncated, encrypted with a key
                that is not in the list, or failing authentication (tampered, moved
                to another id, another deployment's).
        """
        if len(sealed) < OVERHEAD or sealed[:3] != PREFIX:
            _corrupt("not an encrypted fastsess session, or truncated")
        header = bytes(sealed[:HEADER_SIZE])
        aead = self._by_id.get(header[len(PREFIX):])
        if aead is None:
            _corrupt(f"session encrypted with key id {header[len(PREFIX):].hex()}, which is not among this store's keys")
        try:
            envelope: bytes = aead.decrypt(bytes(sealed[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE]), bytes(sealed[HEADER_SIZE + NONCE_SIZE:]), header + associated)
        except Exception:  # InvalidTag; never chained: nothing of the input or the key travels on
            _corrupt("encrypted session failed authentication (tampered, truncated, moved to another id, or another deployment's)")
        return envelope

    def bind(self, serializer: Serializer, keys: KeySpace) -> Serializer:
        """The serializer a store uses: ``serializer``'s envelope encrypted under ``keys.key(id)``."""
        return EncryptedSerializer(serializer, self, keys)

    def __repr__(self) -> str:
        flags = ", write_plaintext=True" if self.write_plaintext else ""
        return f"Encryption(key_ids={list(self.key_ids)!r}, accept_plaintext={self.accept_plaintext}{flags})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an Encryption holds secret keys and cannot be pickled or copied")


def _corrupt(message: str) -> NoReturn:
    raise SessionCorrupt(message) from None


def check_encryption(encryption: Any) -> Encryption | None:
    """Validate a store's ``encryption=`` argument.

    Raises:
        ConfigError: neither None nor an ``Encryption`` (e.g. a bare list of keys).
    """
    if encryption is None or isinstance(encryption, Encryption):
        return encryption
    raise ConfigError(f"encryption must be an Encryption([key, ...]) or None, not {type(encryption).__name__}")


def encryption_from_setting(value: Any) -> Encryption | None:
    """What a framework setting such as ``FASTSESS_ENCRYPTION_KEYS`` holds, as an ``Encryption``:
    None (no encryption), an ``Encryption``, or a list of keys, as base64 texts (what
    settings files and environment variables hold) or as raw 32-byte ``bytes``.

    Raises:
        ConfigError: an empty list, or any reason ``Encryption``/``from_base64`` gives.
    """
    if value is None or isinstance(value, Encryption):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return Encryption.from_base64(value)
    return Encryption(value)


ENV_KEYS = "FASTSESS_ENCRYPTION_KEYS"


def encryption_from_env(environ: Mapping[str, str] | None = None) -> Encryption | None:
    """``FASTSESS_ENCRYPTION_KEYS`` (comma-separated base64 keys, the first encrypts) as an
    ``Encryption``; None when unset or blank.

    Raises:
        ConfigError: a value ``Encryption.from_base64`` refuses (the message names the
            variable and the key's position, never its value).
    """
    raw = (os.environ if environ is None else environ).get(ENV_KEYS, "")
    if not raw.strip():
        return None
    try:
        return Encryption.from_base64(raw.split(","))
    except ConfigError as exc:
        raise ConfigError(f"{ENV_KEYS}: {exc}") from None


class EncryptedSerializer(Serializer):
    """``inner``'s envelope, encrypted (what a store with ``encryption=`` encodes with).

    Limits and codec are ``inner``'s; the plain envelope is built and checked by
    ``inner`` exactly as without encryption, then sealed under the session's Redis key.
    """

    name = "encrypted"

    def __init__(self, inner: Serializer, encryption: Encryption, keys: KeySpace) -> None:
        super().__init__(None, inner.max_size, inner.max_items, inner.max_depth)
        self.inner = inner
        self.encryption = encryption
        self.keys = keys
        # the largest sealed value decode accepts, and encode writes: the body limit plus
        # room for zlib's worst-case growth, the plain header and the encryption's bytes
        self.max_sealed = inner.max_size + inner.max_size // 64 + 64 + OVERHEAD

    def dumps(self, obj: Any) -> bytes:
        """``inner.dumps`` (the codec, unencrypted)."""
        return self.inner.dumps(obj)

    def loads(self, data: bytes) -> Any:
        """``inner.loads`` (the codec, unencrypted)."""
        return self.inner.loads(data)

    def encode_checked(self, session: Session) -> tuple[bytes, dict[str, Any]]:
        """``inner.encode_checked``, the envelope then encrypted for ``session.id``'s key
        (left plain with ``write_plaintext``).

        Raises:
            TypeError, SessionTooLarge: as ``Serializer.encode``.
        """
        envelope, data = self.inner.encode_checked(session)
        if self.encryption.write_plaintext:
            return envelope, data
        sealed = self.encryption.seal(envelope, self.keys.key(session.id).encode())
        if len(sealed) > self.max_sealed:  # pragma: no cover - zlib never grows a body this much
            raise SessionTooLarge(f"the encrypted session is {len(sealed)} bytes, more than {self.max_sealed}")
        return sealed, data

    def decode(self, session_id: str, raw: bytes) -> Session:
        """Decrypt (authenticating ``raw`` against ``session_id``'s key), then ``inner.decode``.

        Raises:
            SessionCorrupt: anything ``Encryption.open`` or ``inner.decode`` refuses, a
                value over the size limit (before any decryption), or a plain envelope
                unless ``accept_plaintext``.
        """
        if not isinstance(raw, (bytes, bytearray)):
            _corrupt("not a fastsess session envelope")
        if raw[:3] != PREFIX:
            if self.encryption.accept_plaintext and raw[:3] == _PLAIN_PREFIX:
                return self.inner.decode(session_id, raw)
            _corrupt("not an encrypted fastsess session (this store encrypts; accept_plaintext is off)")
        if len(raw) > self.max_sealed:
            _corrupt("encrypted session too large")
        return self.inner.decode(session_id, self.encryption.open(raw, self.keys.key(session_id).encode()))
