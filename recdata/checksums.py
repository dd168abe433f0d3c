"""SHA-256 checksums of the dataset files FloRec knows, and their verification.

The lists are the checksums of the canonical files (GroupLens MovieLens files, the UniSRec
preprocessing of Amazon "Industrial & Scientific"), by bare file name inside the dataset folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from florec.recdata.errors import DataError

#: Files of the GroupLens ``ml-100k`` folder (also inside ``ml-100k.zip`` under ``ml-100k/``).
ML100K_SHA256: dict[str, str] = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
    "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
    "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
}

#: sha256 of the GroupLens ``ml-100k.zip`` itself: not known, so the members are verified instead.
ML100K_ZIP_SHA256: str | None = None

#: Files of the ``ml-1m`` folder. The original ``ratings.dat`` is not listed (checksum unknown);
#: ``ratings_no_timestamp.csv`` and ``rated_movie_ids.txt`` belong to the timestamp-free copy.
ML1M_SHA256: dict[str, str] = {
    "README": "2d5ddce86ccbd247207456165827b4b9ddf27282bca93807d4c763e28414f133",
    "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
    "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
    "ratings_no_timestamp.csv": "47e459bb38bdb76916e37e1cad911bfb15c55c3a05c355e692bfe6817e7d2064",
    "rated_movie_ids.txt": "1d1fff458decc082adb3811d1057d6b2d4cf021e76b18e8b4bec47453f836c1d",
}

#: Files of the ``amazon-scientific`` folder (UniSRec preprocessing, RecBole atomic files).
AMAZON_SCIENTIFIC_SHA256: dict[str, str] = {
    "Scientific.item2index": "896ab1017508cf20834d3d0537da9f8f624324223a835af272a98ba16f8c087a",
    "Scientific.test.inter": "546da7e5f44002b4518d7fd58066684bc09613f76c240914e16976d57cfe7083",
    "Scientific.text": "95887e6bda76e54f59b71b566320520d5da74e21d3b6ff8f20bfb6e8e84aa831",
    "Scientific.train.inter": "7284f6489d956fa20c9b64ffc84569264320edba5c3bc2fcb22db2ea083a1163",
    "Scientific.user2index": "f0162b1a3a0c6b7e816f86208e7b36f65d6787923126f9558fbc6d368e4c4974",
    "Scientific.valid.inter": "5f37c84d3b54617cdc46638c89dfe8741c7efc4987acd5eb64de2cbd4311f46c",
}

#: Dataset name -> known file checksums.
KNOWN_SHA256: dict[str, dict[str, str]] = {
    "ml-100k": ML100K_SHA256,
    "ml-1m": ML1M_SHA256,
    "amazon-scientific": AMAZON_SCIENTIFIC_SHA256,
}

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 digest of ``data``.

    Parameters
    ----------
    data : bytes
        The content to hash.

    Returns
    -------
    str
        64 lowercase hex digits.

    """
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : str or Path
        The file to hash.

    Returns
    -------
    str
        64 lowercase hex digits.

    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(
    folder: str | Path,
    expected: Mapping[str, str],
    names: Iterable[str] | None = None,
    *,
    fix: str | None = None,
) -> None:
    """Check files of ``folder`` against their expected sha256 digests.

    Parameters
    ----------
    folder : str or Path
        The folder that holds the files (looked up by bare name).
    expected : mapping of str to str
        File name -> expected hex sha256.
    names : iterable of str, optional
        Only check these names (those without a known checksum are skipped); default all of
        ``expected``.
    fix : str, optional
        The remedy to name in the error; default: replace the file with a fresh download.

    Raises
    ------
    DataError
        A file is missing or its checksum differs; the one-line message names the file and
        the fix.

    """
    folder = Path(folder)
    todo = list(expected) if names is None else [n for n in names if n in expected]
    for name in todo:
        path = folder / name
        remedy = fix or f"delete {path} and download a fresh copy of the dataset"
        if not path.is_file():
            raise DataError(f"file {path} is missing; {remedy}")
        actual = sha256_file(path)
        if actual != expected[name].lower():
            raise DataError(
                f"file {path} fails its sha256 check (got {actual[:12]}..., expected "
                f"{expected[name][:12]}...): it is corrupt or not the canonical file; {remedy}"
            )
