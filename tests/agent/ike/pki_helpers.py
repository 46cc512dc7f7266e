"""A small test PKI made with `cryptography`, plus strongSwan `pki` / `openssl` wrappers for cross-checks.

Used by test_auth.py, test_certs.py and test_identity.py. Keys are generated once per process (RSA
generation is the slow part); certificates are cheap and made per test.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@functools.cache
def key(kind: str, n: int = 0):  # type: ignore[no-untyped-def]
    """Deterministic per (kind, n) within one process: 'ec' (P-256), 'ec384', 'ed25519', 'rsa', 'rsa1024'."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    raise ValueError(kind)


def name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def cn(common: str, org: str = "meshsec") -> x509.Name:
    return name((NameOID.COMMON_NAME, common), (NameOID.ORGANIZATION_NAME, org))


def issue(
    subject: x509.Name,
    subject_key,  # type: ignore[no-untyped-def]
    issuer: x509.Certificate | None = None,
    issuer_key=None,  # type: ignore[no-untyped-def]
    *,
    ca: bool = False,
    path_length: int | None = None,
    not_before: dt.datetime = NOW - 30 * DAY,
    not_after: dt.datetime = NOW + 30 * DAY,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    emails: Sequence[str] = (),
    key_usage: str | None = "default",
    basic_constraints: bool = True,
    serial: int | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    hash_alg: hashes.HashAlgorithm | None = None,
    pss: bool = False,
) -> x509.Certificate:
    """One certificate; self-signed when `issuer` is None."""
    signer_key = issuer_key if issuer is not None else subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(subject_key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if key_usage == "default":
        key_usage = "ca" if ca else "ee"
    if key_usage is not None:
        flags = dict.fromkeys(
            (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        if key_usage == "ca":
            flags.update(key_cert_sign=True, crl_sign=True)
        elif key_usage == "ee":
            flags.update(digital_signature=True)
        elif key_usage == "encipher":
            flags.update(key_encipherment=True)
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.RFC822Name(e) for e in emails]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    if isinstance(signer_key, ed25519.Ed25519PrivateKey):
        return builder.sign(signer_key, None)
    algorithm = hash_alg or hashes.SHA256()
    if pss:
        return builder.sign(
            signer_key, algorithm, rsa_padding=padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)
        )
    return builder.sign(signer_key, algorithm)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(private_key) -> bytes:  # type: ignore[no-untyped-def]
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def run(*argv: str | Path, stdin: bytes | None = None) -> bytes:
    """Run a tool (strongSwan pki, openssl); fail the test with its stderr if it fails."""
    proc = subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, (
        f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
    )
    return proc.stdout


def strongswan_pki(*args: str | Path) -> bytes:
    return run("pki", *args)
