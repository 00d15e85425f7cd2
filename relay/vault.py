"""Secrets at rest: upstream tokens and webhook secrets encrypted with RELAY_SECRET_KEY (Fernet)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from relay.errors import ConfigError


def generate_key() -> str:
    """A new key for RELAY_SECRET_KEY."""
    return Fernet.generate_key().decode()


class Vault:
    """Encrypts with the newest key and decrypts with any, so keys can be rotated."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ConfigError(
                "RELAY_SECRET_KEY is not set; `relay keygen` prints a new key to put there"
            )
        try:
            fernets = [Fernet(key.encode()) for key in keys]
            self._fernet = MultiFernet(fernets)
            self._newest = fernets[0]
        except ValueError as exc:
            raise ConfigError(
                "RELAY_SECRET_KEY must be comma-separated Fernet keys from `relay keygen`"
            ) from exc

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a stored secret cannot be decrypted with RELAY_SECRET_KEY; "
                "keep the old key listed after the new one while rotating"
            ) from exc

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the newest key."""
        return self._fernet.rotate(ciphertext.encode()).decode()

    def rekeyed(self, ciphertext: str) -> str | None:
        """The ciphertext re-encrypted under the newest key, or None when it already is.

        `relay rekey` rewrites only what needs it, so a rerun after a crash skips the rows an
        earlier run finished and its counts say what was left. Raises ConfigError when no
        listed key decrypts it."""
        try:
            self._newest.decrypt(ciphertext.encode())
            return None
        except InvalidToken:
            pass
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a stored secret cannot be decrypted with any key in RELAY_SECRET_KEY"
            ) from exc
