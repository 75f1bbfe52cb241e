"""The signed session-id cookie shared by the Flask and Starlette drop-ins."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from fastsess.contrib._common import CookieSigner, plain_copy
from fastsess.stores.base import new_session_id


def expected_cookie(secret: bytes, session_id: str) -> str:
    key = hmac.new(secret, b"fastsess.contrib session-id cookie v1", hashlib.sha256).digest()
    mac = hmac.new(key, session_id.encode(), hashlib.sha256).digest()
    return session_id + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_cookie_is_the_id_and_an_hmac_sha256_under_a_derived_key() -> None:
    sid = new_session_id()
    signer = CookieSigner("s3cret")
    assert signer.sign(sid) == expected_cookie(b"s3cret", sid)
    assert signer.unsign(expected_cookie(b"s3cret", sid)) == sid
    # the key is derived: a plain HMAC under the secret itself does not verify
    plain = base64.urlsafe_b64encode(hmac.new(b"s3cret", sid.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert signer.unsign(f"{sid}.{plain}") is None


def test_tampering_is_rejected() -> None:
    sid = new_session_id()
    signer = CookieSigner(b"s3cret")
    good = signer.sign(sid)
    flipped = good[:-1] + ("A" if good[-1] != "A" else "B")
    other = new_session_id()
    for bad in (flipped, other + good[43:], good + "x", good[:-1], sid, "", None, 42, good.replace(".", "-"), "\u00e9" * 87):
        assert signer.unsign(bad) is None
    assert CookieSigner("other").unsign(good) is None


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        CookieSigner("")


def test_plain_copy_copies_every_container() -> None:
    data = {"a": [1, {"b": [2]}], "t": (1, 2), "s": "x"}
    copied = plain_copy(data)
    assert copied == {"a": [1, {"b": [2]}], "t": [1, 2], "s": "x"}
    copied["a"][1]["b"].append(3)
    assert data["a"][1]["b"] == [2]


def test_only_verified_values_are_remembered_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastsess.contrib import _common

    monkeypatch.setattr(_common, "VERIFIED_MAX", 3)
    signer = CookieSigner("s3cret")
    good = [signer.sign(new_session_id()) for _ in range(5)]
    forged = good[0][:44] + ("A" if good[0][44] != "A" else "B") + good[0][45:]
    for _ in range(2):
        assert signer.unsign(forged) is None  # a forgery is refused every time, never remembered
        for value in good:
            assert signer.unsign(value) == value[:43]
    assert forged not in signer._verified
    assert 0 < len(signer._verified) <= 3
