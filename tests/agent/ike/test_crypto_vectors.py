"""Known-answer tests: NIST CAVP IKEv2 KDF, RFC 4868 PRF/ICV (with errata), RFC 7634 Appendix B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from meshsec.agent.ike import crypto
from meshsec.agent.ike.constants import PT, Encr, Integ, Notify, Prf
from meshsec.agent.ike.message import Message, decrypt_message, encode_encrypted, parse_message
from meshsec.agent.ike.payloads import Notify as NotifyPayload

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def _load(name: str) -> list[dict]:
    data = json.loads((VECTORS / name).read_text())
    assert all(c["source"] for c in data["cases"])
    return data["cases"]


KDF = _load("ikev2_kdf_cavp.json")
PRF_IDS = {
    "PRF_HMAC_SHA1": Prf.HMAC_SHA1,
    "PRF_HMAC_SHA2_256": Prf.HMAC_SHA2_256,
    "PRF_HMAC_SHA2_384": Prf.HMAC_SHA2_384,
    "PRF_HMAC_SHA2_512": Prf.HMAC_SHA2_512,
}


@pytest.mark.parametrize("case", KDF, ids=[c["id"] for c in KDF])
def test_cavp_ikev2_kdf(case: dict) -> None:
    h = bytes.fromhex
    prf_id = PRF_IDS[case["prf"]]
    ni, nr, gir, spi_i, spi_r = (
        h(case["ni"]),
        h(case["nr"]),
        h(case["gir"]),
        h(case["spi_i"]),
        h(case["spi_r"]),
    )
    seed = crypto.skeyseed(prf_id, ni, nr, gir)
    assert seed == h(case["skeyseed"])
    dkm = crypto.prf_plus(prf_id, seed, ni + nr + spi_i + spi_r, case["dkm_bits"] // 8)
    assert dkm == h(case["dkm"])
    sk_d = dkm[: crypto.prf_len(prf_id)]
    n = case["child_sa_dkm_bits"] // 8
    assert crypto.child_keymat(prf_id, sk_d, ni, nr, n) == h(case["dkm_child_sa"])
    assert crypto.child_keymat(prf_id, sk_d, ni, nr, n, gir=h(case["gir_new"])) == h(case["dkm_child_sa_dh"])
    assert crypto.rekey_skeyseed(prf_id, sk_d, h(case["gir_new"]), ni, nr) == h(case["skeyseed_rekey"])


def test_derive_ike_keys_splits_dkm_in_rfc_order() -> None:
    case = next(c for c in KDF if c["prf"] == "PRF_HMAC_SHA2_256")
    h = bytes.fromhex
    ni, nr = h(case["ni"]), h(case["nr"])
    seed = crypto.skeyseed(Prf.HMAC_SHA2_256, ni, nr, h(case["gir"]))
    keys = crypto.derive_ike_keys(
        Prf.HMAC_SHA2_256,
        seed,
        ni,
        nr,
        h(case["spi_i"]),
        h(case["spi_r"]),
        Encr.AES_CBC,
        128,
        Integ.HMAC_SHA2_256_128,
    )
    joined = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er + keys.sk_pi + keys.sk_pr
    assert [len(x) for x in (keys.sk_d, keys.sk_ai, keys.sk_ei, keys.sk_pi)] == [32, 32, 16, 32]
    dkm = h(case["dkm"])
    n = min(len(dkm), len(joined))
    assert n >= 128 and joined[:n] == dkm[:n]
    assert "redacted" in repr(keys)


HMAC = _load("hmac_sha2.json")
_HASH = {"SHA-256": hashes.SHA256, "SHA-384": hashes.SHA384, "SHA-512": hashes.SHA512}
_PRF_FOR = {"SHA-256": Prf.HMAC_SHA2_256, "SHA-384": Prf.HMAC_SHA2_384, "SHA-512": Prf.HMAC_SHA2_512}
_INTEG_FOR = {128: Integ.HMAC_SHA2_256_128, 192: Integ.HMAC_SHA2_384_192, 256: Integ.HMAC_SHA2_512_256}


@pytest.mark.parametrize("case", HMAC, ids=[c["id"] for c in HMAC])
def test_rfc4868(case: dict) -> None:
    """Verified cases must reproduce; the two known-bad printings (AUTH512-4 as printed, Erratum 5507)
    must NOT, which proves the test can tell a wrong key from a right one."""
    key, data = bytes.fromhex(case["key"]), bytes.fromhex(case["data"])
    out = crypto.prf(_PRF_FOR[case["hash"]], key, data)
    matches = out == bytes.fromhex(case["prf_output"])
    if "icv_bits" in case:
        _, key_len, icv_len = crypto.INTEG_ALG[_INTEG_FOR[case["icv_bits"]]]
        assert icv_len * 8 == case["icv_bits"]
        matches = matches and out[:icv_len] == bytes.fromhex(case["truncated_icv"])
        if case.get("key_octets_stated") and case["verified"]:
            assert key_len == case["key_octets_stated"]
    assert matches is case["verified"]


def test_sk_cipher_cbc_uses_truncated_hmac_over_whole_message() -> None:
    integ_key = bytes(range(32))
    c = crypto.SkCipher(Encr.AES_CBC, 128, bytes(16), Integ.HMAC_SHA2_256_128, integ_key)
    aad = b"A" * 32
    body = c.seal(aad, c.pad(b"hello"))
    mac = chmac.HMAC(integ_key, hashes.SHA256())
    mac.update(aad + body[:-16])
    assert body[-16:] == mac.finalize()[:16]
    assert c.open(aad, body) == b"hello"
    with pytest.raises(crypto.IntegrityError):
        c.open(aad, body[:-1] + bytes([body[-1] ^ 1]))


CHACHA = {c["id"]: c for c in _load("chacha_rfc7634.json")}


def test_rfc7634_appendix_b_ike_message_decrypts_and_reencrypts_byte_for_byte() -> None:
    v = CHACHA["rfc7634-appendix-B-ikev2"]
    raw = bytes.fromhex(v["ike_message"])
    key = bytes.fromhex(v["key"]) + bytes.fromhex(v["salt"])
    cipher = crypto.SkCipher(Encr.CHACHA20_POLY1305, 256, key, Integ.NONE, b"")
    msg = parse_message(raw)
    assert msg.exchange == v["exchange_type"] and msg.message_id == v["message_id"]
    assert msg.sk_first == PT.NOTIFY
    inner = decrypt_message(msg, cipher)
    assert inner == [NotifyPayload(Notify.SET_WINDOW_SIZE, data=(10).to_bytes(4, "big"))]

    class FixedIv:
        iv_len, icv_len = 8, 16

        def pad(self, body: bytes) -> bytes:
            return cipher.pad(body)

        def seal(self, aad: bytes, plaintext: bytes) -> bytes:
            return cipher.seal(aad, plaintext, iv=bytes.fromhex(v["iv"]))

    out = Message(msg.spi_i, msg.spi_r, msg.exchange, msg.flags, msg.message_id, inner)
    assert encode_encrypted(out, FixedIv()) == raw
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    with pytest.raises(crypto.IntegrityError):
        decrypt_message(parse_message(bytes(tampered)), cipher)


@pytest.mark.parametrize(
    ("encr", "bits", "integ"),
    [
        (Encr.AES_GCM_16, 128, Integ.NONE),
        (Encr.AES_GCM_16, 256, Integ.NONE),
        (Encr.CHACHA20_POLY1305, 256, Integ.NONE),
        (Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128),
        (Encr.AES_CBC, 256, Integ.HMAC_SHA2_384_192),
        (Encr.AES_CBC, 256, Integ.HMAC_SHA2_512_256),
    ],
)
def test_sk_round_trip_every_cipher(encr: int, bits: int, integ: int) -> None:
    ek = bytes(range(crypto.encr_key_len(encr, bits)))
    ik = bytes(range(100, 100 + crypto.integ_key_len(integ)))
    a, b = crypto.SkCipher(encr, bits, ek, integ, ik), crypto.SkCipher(encr, bits, ek, integ, ik)
    payloads = [NotifyPayload(Notify.INITIAL_CONTACT)]
    raw = encode_encrypted(Message(b"i" * 8, b"r" * 8, 37, 0x08, 3, payloads), a)
    assert decrypt_message(parse_message(raw), b) == payloads
    assert encode_encrypted(Message(b"i" * 8, b"r" * 8, 37, 0x08, 3, payloads), a) != raw  # fresh IV
