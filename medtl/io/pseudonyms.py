"""Pseudonyms: salted, keyed hashes of patient ids and file names, and the secret salt kept
in a run folder (or the cache) that keys them.

A hash is an HMAC-SHA-256 cut to a short hex string. The salt is random, kept in a file
beside the data it protects (mode 0600) and never printed, so the same patient gets the same
pseudonym within a run while a list of candidate ids cannot be hashed to find one without the
salt. It sits at the bottom of medtl (with the readers) because the manifest pseudonymises
patient ids read from DICOM headers and the report and explanations name cases by hash.

Example:
    >>> salt = run_salt("runs/demo/cv-1a2b")          # created on first use
    >>> hash_patient_id("P0001", salt)                 # doctest: +SKIP
    '3f9c1a0b7e2d'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["SALT_FILE", "hash_patient_id", "run_salt"]

SALT_FILE = "deid.salt"
_HASH_LEN = 12  # 48 bits: collisions are negligible for the patients of one study


def run_salt(run_dir: str | Path, create: bool = True, name: str = SALT_FILE) -> bytes:
    """The run's secret salt, read from ``run_dir/deid.salt`` (created, mode 0600, if absent).

    Args:
        run_dir: the run folder (or another folder that keeps a salt).
        create: make a new random salt when there is none (else raise).
        name: the salt file's name in that folder.

    Raises:
        FileNotFoundError: no salt file and ``create`` is False.

    Example:
        >>> salt = run_salt(tmp_path)   # 32 random bytes, the same on every later call
    """
    path = Path(run_dir) / name
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    if not create:
        raise FileNotFoundError(f"{path}: no de-identification salt in this run folder; "
                                "call run_salt(run_dir) to create one")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # fails if a concurrent job created the salt first; theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def hash_patient_id(pid: Any, salt: bytes | str, length: int = _HASH_LEN) -> str:
    """Salted SHA-256 (HMAC) of a patient id, as ``length`` lowercase hex characters.

    Args:
        pid: the raw id (converted with ``str``; surrounding whitespace ignored).
        salt: the run's salt (:func:`run_salt`); a str is UTF-8 encoded.
        length: hex characters kept (4 to 64).

    Example:
        >>> len(hash_patient_id("P0001", b"salt"))
        12
        >>> hash_patient_id("P0001", b"salt") != hash_patient_id("P0001", b"other")
        True
    """
    if not 4 <= length <= 64:
        raise ValueError(f"length={length}: expected 4 to 64 hex characters")
    key = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    if not key:
        raise ValueError("salt: is empty; an unsalted hash can be reversed by hashing candidate ids, "
                         "use run_salt(run_dir)")
    msg = str(pid).strip().encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:length]
