"""Issuer and device-side tooling: issuer keys, credentials, a phone's QR codes and a card's answers.

Off the hot path and pure Python (PyNaCl for signing). Tests, load tests and
the demo make their credentials and presentations through this module, the
same way a card platform, a phone app and a card would::

    key = IssuerKey.generate(key_id=1)
    key.save("issuer-1.key")                       # mode 0600, refuses to overwrite
    phone = Phone.new(key, entitlements=Entitlements(birth_date=date(1950, 3, 1)),
                      valid_from_ms=now_ms, valid_until_ms=now_ms + 365 * 86_400_000)
    text = phone.qr_text(now_ms)                   # "TG1:..." for the validator's scanner
    card = Card.new(key, valid_from_ms=now_ms, valid_until_ms=now_ms + 365 * 86_400_000)
    response = card.answer(b"bus-101-v1", reader_nonce, now_ms)

The byte layout is specified in docs/credential-format.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import time

import nacl.exceptions
import nacl.signing

from fastpath import wire
from fastpath.entitlements import Entitlements, PriorityGroup
from fastpath.errors import KeyFileError
from fastpath.reasons import Medium

__all__ = [
    "Card", "CredentialFields", "Entitlements", "IssuerKey", "Phone", "PriorityGroup",
    "issue_credential", "make_qr", "new_reader_nonce", "new_token", "parse_credential", "parse_presentation",
]

CredentialFields = wire.CredentialFields

KEY_FILE_FORMAT = "tapgate-issuer-key"
KEY_FILE_VERSION = 1
# Error correction level of the QR codes the tooling draws. Level M fits the
# 391-character code in version 12 (65 x 65 modules); see docs/credential-format.md.
QR_ERROR = "M"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_token() -> bytes:
    """Return 16 random bytes, for a credential id or a pseudonymous holder or account token."""
    return os.urandom(wire.TOKEN_LEN)


def new_reader_nonce() -> bytes:
    """Return a fresh 16-byte reader nonce, as a validator makes for each card challenge."""
    return os.urandom(wire.NONCE_LEN)


class IssuerKey:
    """An Ed25519 issuer signing key with its key id (0-65535)."""

    __slots__ = ("key_id", "_signing_key")

    def __init__(self, key_id: int, signing_key: nacl.signing.SigningKey) -> None:
        if not isinstance(key_id, int) or not 0 <= key_id <= 0xFFFF:
            raise ValueError(f"key_id = {key_id!r} is outside 0 to 65535")
        self.key_id = key_id
        self._signing_key = signing_key

    @classmethod
    def generate(cls, key_id: int) -> IssuerKey:
        return cls(key_id, nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, key_id: int, seed: bytes) -> IssuerKey:
        """Rebuild a key from its 32-byte seed (deterministic keys for tests and vectors)."""
        return cls(key_id, nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached signature of ``message``."""
        return self._signing_key.sign(message).signature

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file, readable and writable by its owner only (mode 0600).

        Refuses to replace an existing file unless ``overwrite`` is true, so a
        rotation never destroys the key that signed the credentials in use.
        """
        target = pathlib.Path(path)
        document = {
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "key_id": self.key_id,
            "seed": bytes(self._signing_key).hex(),
            "public_key": self.public_key.hex(),
        }
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError as exc:
            raise KeyFileError(f"key file {target} already exists; choose another path or pass overwrite",
                               f"密钥文件 {target} 已存在，请换一个路径") from exc
        with os.fdopen(fd, "w", encoding="ascii") as file:
            # O_CREAT applies the mode only to a new file; an overwritten one is narrowed here.
            os.fchmod(file.fileno(), 0o600)
            json.dump(document, file, indent=2)
            file.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IssuerKey:
        """Read a key file written by :meth:`save`; refuse one that group or others can read."""
        source = pathlib.Path(path)
        try:
            mode = source.stat().st_mode
            text = source.read_text(encoding="ascii")
        except FileNotFoundError as exc:
            raise KeyFileError(f"key file {source} not found", f"找不到密钥文件 {source}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {source} has mode {stat.S_IMODE(mode):04o}; it must be readable by its owner only "
                f"(chmod 600 {source})",
                f"密钥文件 {source} 的权限为 {stat.S_IMODE(mode):04o}，只能允许所有者读取（chmod 600 {source}）")
        try:
            document = json.loads(text)
            if document.get("format") != KEY_FILE_FORMAT or document.get("version") != KEY_FILE_VERSION:
                raise ValueError(f"format {document.get('format')!r} version {document.get('version')!r}")
            key = cls.from_seed(int(document["key_id"]), bytes.fromhex(document["seed"]))
            expected = bytes.fromhex(document["public_key"])
        except (ValueError, KeyError, TypeError, AttributeError, nacl.exceptions.ValueError) as exc:
            raise KeyFileError(f"key file {source} is not a valid tapgate issuer key file: {exc}",
                               f"密钥文件 {source} 不是有效的 tapgate 发卡密钥文件：{exc}") from exc
        if key.public_key != expected:
            raise KeyFileError(f"key file {source}: the public key does not match the seed",
                               f"密钥文件 {source}：公钥与私钥种子不一致")
        return key

    def __repr__(self) -> str:
        return f"<IssuerKey {self.key_id} public_key={self.public_key.hex()[:16]}...>"


def _check_bytes(name: str, value: object, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        shown = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ValueError(f"{name} must be {size} bytes, got {shown}")
    return value


def _check_ms(name: str, value: object) -> int:
    if not isinstance(value, int) or not 0 <= value < (1 << 62):
        raise ValueError(f"{name} = {value!r} must be Unix milliseconds from 0 to 2**62 - 1")
    return value


def issue_credential(key: IssuerKey, *, holder_token: bytes, account_token: bytes, entitlements: Entitlements,
                     valid_from_ms: int, valid_until_ms: int, holder_public_key: bytes,
                     credential_id: bytes | None = None, issued_at_ms: int | None = None) -> bytes:
    """Return a signed credential (body || issuer signature, 180 bytes).

    ``credential_id`` defaults to 16 random bytes and ``issued_at_ms`` to now.
    ``valid_until_ms`` is exclusive.
    """
    if valid_until_ms <= valid_from_ms:
        raise ValueError(f"valid_until_ms = {valid_until_ms} must be after valid_from_ms = {valid_from_ms}")
    if not isinstance(entitlements, Entitlements):
        raise TypeError(f"entitlements must be fastpath.Entitlements, got {type(entitlements).__name__}")
    if not isinstance(entitlements.priority_group, int) or not 0 <= entitlements.priority_group <= 255:
        raise ValueError(f"priority_group = {entitlements.priority_group!r} is outside 0 to 255")
    fields = wire.CredentialFields(
        version=wire.CREDENTIAL_VERSION,
        key_id=key.key_id,
        credential_id=_check_bytes("credential_id", credential_id if credential_id is not None else new_token(),
                                   wire.TOKEN_LEN),
        holder_token=_check_bytes("holder_token", holder_token, wire.TOKEN_LEN),
        account_token=_check_bytes("account_token", account_token, wire.TOKEN_LEN),
        issued_at_ms=_check_ms("issued_at_ms", issued_at_ms if issued_at_ms is not None else now_ms()),
        valid_from_ms=_check_ms("valid_from_ms", valid_from_ms),
        valid_until_ms=_check_ms("valid_until_ms", valid_until_ms),
        entitlements=entitlements,
        holder_public_key=_check_bytes("holder_public_key", holder_public_key, 32),
    )
    body = wire.encode_body(fields)
    return body + key.sign(body)


def parse_credential(credential: bytes) -> CredentialFields:
    """Decode a 180-byte credential without checking its signature (for inspection and tools)."""
    if len(credential) != wire.CREDENTIAL_LEN:
        raise ValueError(f"credential of {len(credential)} bytes, expected {wire.CREDENTIAL_LEN}")
    return wire.decode_body(credential[:wire.BODY_LEN])


def parse_presentation(medium: int, presented: bytes) -> tuple[bytes, bytes]:
    """Split a QR text or card response into (credential, dynamic part); no checks beyond the layout."""
    data = wire.base45_decode(presented[wire.QR_PREFIX_LEN:]) if medium == Medium.QR else presented
    return data[wire.OFF_CREDENTIAL:wire.OFF_DYNAMIC], data[wire.OFF_DYNAMIC:len(data) - wire.SIGNATURE_LEN]


class _Holder:
    """What a phone and a card share: a credential and the holder's signing key."""

    __slots__ = ("credential", "_holder_key", "_body_digest")

    def __init__(self, credential: bytes, holder_signing_key: nacl.signing.SigningKey | bytes) -> None:
        if isinstance(holder_signing_key, bytes):
            holder_signing_key = nacl.signing.SigningKey(holder_signing_key)
        fields = parse_credential(credential)
        if fields.holder_public_key != bytes(holder_signing_key.verify_key):
            raise ValueError("the holder signing key does not match the public key in the credential")
        self.credential = credential
        self._holder_key = holder_signing_key
        self._body_digest = wire.digest(credential[:wire.BODY_LEN])

    @classmethod
    def new(cls, cred_issuer: IssuerKey, *, entitlements: Entitlements | None = None,
            valid_from_ms: int | None = None, valid_until_ms: int | None = None,
            holder_token: bytes | None = None, account_token: bytes | None = None,
            credential_id: bytes | None = None, issued_at_ms: int | None = None,
            holder_seed: bytes | None = None):
        """Make a holder key pair and have ``cred_issuer`` issue a credential for it.

        Defaults: random tokens and credential id, an adult born 1990-01-01
        with no concessions, valid from now for 365 days, and issued at the
        start of validity.
        """
        import datetime as dt

        holder_key = nacl.signing.SigningKey(holder_seed) if holder_seed else nacl.signing.SigningKey.generate()
        start = valid_from_ms if valid_from_ms is not None else now_ms()
        credential = issue_credential(
            cred_issuer,
            holder_token=holder_token or new_token(),
            account_token=account_token or new_token(),
            entitlements=entitlements or Entitlements(birth_date=dt.date(1990, 1, 1)),
            valid_from_ms=start,
            valid_until_ms=valid_until_ms if valid_until_ms is not None else start + 365 * 86_400_000,
            holder_public_key=bytes(holder_key.verify_key),
            credential_id=credential_id,
            issued_at_ms=issued_at_ms if issued_at_ms is not None else start,
        )
        return cls(credential, holder_key)

    @property
    def fields(self) -> CredentialFields:
        return parse_credential(self.credential)

    @property
    def holder_public_key(self) -> bytes:
        return bytes(self._holder_key.verify_key)

    @property
    def holder_seed(self) -> bytes:
        """The holder's 32-byte private seed (for tests that persist a phone; treat as a secret)."""
        return bytes(self._holder_key)


class Phone(_Holder):
    """A phone app holding a credential: makes a fresh signed QR code on demand, offline."""

    __slots__ = ("counter",)

    def __init__(self, credential: bytes, holder_signing_key: nacl.signing.SigningKey | bytes,
                 counter: int = 0) -> None:
        super().__init__(credential, holder_signing_key)
        self.counter = counter

    def qr_envelope(self, now_ms: int) -> bytes:
        """Return the binary QR presentation for time ``now_ms``; increments :attr:`counter`."""
        _check_ms("now_ms", now_ms)
        self.counter = (self.counter + 1) & 0xFFFFFFFF
        dynamic = now_ms.to_bytes(8, "big") + self.counter.to_bytes(4, "big")
        signature = self._holder_key.sign(wire.QR_CONTEXT + self._body_digest + dynamic).signature
        return bytes((wire.ENVELOPE_VERSION, Medium.QR)) + self.credential + dynamic + signature

    def qr_text(self, now_ms: int) -> str:
        """Return the QR code's text ("TG1:" + Base45, 391 characters); increments :attr:`counter`."""
        return (wire.QR_PREFIX + wire.base45_encode(self.qr_envelope(now_ms))).decode("ascii")


class Card(_Holder):
    """A social security card: signs each reader's challenge with the holder key on the chip."""

    __slots__ = ()

    def answer(self, device_id: bytes, reader_nonce: bytes, time_ms: int) -> bytes:
        """Return the card response for the reader's challenge (device id, nonce, time)."""
        _check_ms("time_ms", time_ms)
        dynamic = wire.encode_card_dynamic(device_id, reader_nonce, time_ms)
        signature = self._holder_key.sign(wire.CARD_CONTEXT + self._body_digest + dynamic).signature
        return bytes((wire.ENVELOPE_VERSION, Medium.CARD)) + self.credential + dynamic + signature


def make_qr(text: str, path: str | os.PathLike[str] | None = None, *, scale: int = 4):
    """Draw ``text`` as a QR code at level M with segno; write PNG or SVG by ``path``'s suffix.

    Returns the segno QR code object (its ``version`` and ``error`` attributes
    tell the size chosen).
    """
    import segno

    code = segno.make(text, error=QR_ERROR, boost_error=False, micro=False)
    if path is not None:
        suffix = pathlib.Path(path).suffix.lower()
        if suffix not in (".png", ".svg"):
            raise ValueError(f"QR image path {path}: the suffix must be .png or .svg")
        code.save(str(path), scale=scale, border=4)
    return code
