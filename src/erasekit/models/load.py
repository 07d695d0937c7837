"""Resolve and load the models erasekit works on.

``testbed`` names the pipeline shipped inside the package; any other value is a local diffusers
pipeline directory or a model-hub id (loaded with ``DiffusionPipeline.from_pretrained``; hub ids
are only fetched when the user asks for one, never by tests or defaults).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch

from erasekit.core.errors import MissingFileError, ModelLoadError, first_line

TESTBED = "testbed"
#: The testbed retrained without star, zorbo and the watermark (``erasekit testbed train --exclude``).
ORACLE = "testbed-oracle"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


#: The shipped fact-world language model and its retrained oracles (``erasekit testbed train --llm``).
TESTBED_LLM = "testbed-llm"
LLM_ORACLES = {"testbed-llm-oracle-forget01": "forget01", "testbed-llm-oracle-forget05": "forget05"}


def testbed_dir(which: str = "image") -> Path:
    """Directory of a shipped testbed: ``"image"`` the StableDiffusionPipeline (saved with
    save_pretrained), ``"llm"`` the fact-world GPT-2 (``AutoModelForCausalLM.from_pretrained`` loads
    it offline), ``"llm-oracle-forget01"`` / ``"llm-oracle-forget05"`` its oracles."""
    root = Path(__file__).parent.parent / "testbeds"
    if which == "image":
        return root / "image" / "weights"
    if which == "llm" or f"testbed-{which}" in LLM_ORACLES:
        return root / "facts" / which
    raise ValueError(f"unknown testbed {which!r}; choose image, llm, {', '.join(n[len('testbed-') :] for n in LLM_ORACLES)}")


def oracle_dir() -> Path:
    """Directory of the shipped oracle pipeline (the testbed world without its excluded concepts)."""
    return Path(__file__).parent.parent / "testbeds" / "image" / "oracle"


def testbed_classifier_path() -> Path:
    return testbed_dir() / "classifier.safetensors"


def is_testbed(model: str | os.PathLike) -> bool:
    return str(model) == TESTBED or Path(model).resolve() == testbed_dir().resolve()


def resolve_source(model: str | os.PathLike, shipped: dict[str, tuple[Path, str]], marker: str, kind: str) -> str:
    """What ``from_pretrained`` takes for ``model``: a shipped name (``shipped``: name -> its directory
    and the training flags that make it), an existing directory holding ``marker``, or a hub id
    ``org/name``; anything else is a one-line error naming what ``model`` is not."""
    text = str(model).strip()
    names = " or ".join(repr(n) for n in shipped)
    if not text:
        raise ModelLoadError(f"empty model name: pass --model {next(iter(shipped))}, a local {kind} directory or a hub id")
    if text in shipped:
        path, how = shipped[text]
        if not (path / marker).is_file():
            raise MissingFileError(
                f"no {text} weights at {path} (this installation does not ship them); train them with "
                f"'erasekit testbed train{how} --out <dir>' and pass --model <dir>"
            )
        return str(path)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            raise ModelLoadError(f"{path} is not a {kind} directory (no {marker} in it)")
        return str(path)
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        return text
    raise ModelLoadError(
        f"unknown model {text!r}: not {names}, not an existing directory, and not a hub id of the form 'org/name'"
    )


def resolve_model(model: str | os.PathLike) -> str:
    """Map a diffusion model name to what ``from_pretrained`` takes (:func:`resolve_source`)."""
    shipped = {TESTBED: (testbed_dir(), ""), ORACLE: (oracle_dir(), " --exclude star --exclude zorbo --exclude watermark")}
    return resolve_source(model, shipped, "model_index.json", "diffusers pipeline")


def pick_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else Apple MPS, else CPU."""
    if device not in (None, "auto"):
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ModelLoadError(f"invalid device {device!r}: {first_line(e)}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ModelLoadError(
                    f"--device {device}: this torch build or machine has no CUDA device (use --device cpu, or install a CUDA build of torch)"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ModelLoadError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ModelLoadError(f"--device {device}: Apple MPS is not available here (use --device cpu)")
        elif dev.type not in ("cpu", "cuda", "mps"):
            raise ModelLoadError(f"--device {device}: erasekit runs on cpu, cuda or mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``float32`` / ``float16`` / ``bfloat16`` (or fp32, fp16, half, bf16, a torch dtype); ``None`` or
    ``auto``: as the checkpoint is stored (diffusers loads float32 unless told otherwise)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and dtype not in DTYPES.values():
            raise ModelLoadError(f"dtype {dtype} is not supported; use float32, float16 or bfloat16")
        return dtype
    text = str(dtype).strip().lower()
    if text == "auto":
        return None
    if text not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return DTYPES[text]


def check_placement(device: str | None, dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype | None]:
    """The device and precision a command will load its model on, checked before any other work
    (:func:`pick_device`, :func:`parse_dtype`)."""
    return pick_device(device), parse_dtype(dtype)


def load_pipeline(model: str | os.PathLike = TESTBED, device: str | None = None, dtype: str | torch.dtype | None = None):
    """Load a diffusers pipeline (a fresh copy each call: callers may change its weights freely), on
    ``device`` (default: CUDA, else MPS, else CPU) in ``dtype`` (default: float32)."""
    from diffusers import DiffusionPipeline

    target, torch_dtype = check_placement(device, dtype)  # a device or dtype that is not there fails before reading weights
    source = resolve_model(model)
    kwargs: dict[str, object] = {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    if source in (str(testbed_dir()), str(oracle_dir())):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"could not load {source!r} as a diffusers pipeline: {first_line(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        without_hub_kernels(component)
    return pipe.to(target)


def without_hub_kernels(model):
    """Turn off transformers' Hub kernels on a loaded model (on by default in transformers 5): with them,
    ``model.train()`` on a GPU re-kernelizes its layers with kernels fetched from the Hub, which
    erasekit's default path never does (and which would change the numerics between devices)."""
    if getattr(model, "use_kernels", False) and hasattr(model, "set_use_kernels"):
        model.set_use_kernels(False)
    return model


#: The two kinds of model erasekit works on (the registry's families group under them).
DIFFUSION, CAUSAL_LM = "diffusion", "causal-lm"
#: What each kind is called in messages: (many, one).
KIND_WORDS = {DIFFUSION: ("image pipelines", "an image pipeline"), CAUSAL_LM: ("language models", "a language model")}


def other_kind(kind: str) -> str:
    """The kind that is not ``kind``."""
    return CAUSAL_LM if kind == DIFFUSION else DIFFUSION


def refuse_options(kind: str, subject: str, **options) -> None:
    """A one-line :class:`~erasekit.core.errors.ConfigError` for the first of ``options`` that was given
    (not ``None``, not ``False``) although it applies only to the other kind of model than ``kind``:
    an API job never ignores an argument it cannot use. ``subject`` names the model."""
    from erasekit.core.errors import ConfigError

    name = _first_given(options)
    if name is not None:
        raise ConfigError(
            f"{name}= applies to {KIND_WORDS[other_kind(kind)][0]} only; {subject} is {KIND_WORDS[kind][1]} (drop {name})"
        )


def _first_given(options: dict) -> str | None:
    """The name of the first of ``options`` that was given (not ``None``, not ``False``)."""
    return next((name for name, value in options.items() if value is not None and value is not False), None)


def refuse_mode(mode: str, why: str, **options) -> None:
    """A one-line :class:`~erasekit.core.errors.ConfigError` for the first of ``options`` that was given
    although ``mode`` (a way the job runs on the same kind of model, e.g. the testbed bench without
    ``--prompts``) cannot use it; ``why`` says where it belongs."""
    from erasekit.core.errors import ConfigError

    name = _first_given(options)
    if name is not None:
        raise ConfigError(f"{name}= does not apply to {mode}: {why} (drop {name})")


def kind_of_any(model, hub: bool = False) -> str:
    """The kind of ``model``: a name or directory (:func:`model_kind`, nothing loads) or a loaded model
    (:func:`kind_of`)."""
    return model_kind(model, hub=hub) if isinstance(model, (str, os.PathLike)) else kind_of(model)


@contextlib.contextmanager
def quiet_transformers():
    """``transformers``' progress bars and notices off for the block (a small model loads in a blink;
    the bar is noise in erasekit's output, and so is the note that torchvision is absent: erasekit
    never installs it and uses the PIL image processors), restored after."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def model_label(model) -> str:
    """How results name a model (never this machine's own paths): a shipped testbed by its name
    (``testbed-llm``, not the directory it resolved to), a path inside the current directory relative
    to it, anything else as given."""
    from erasekit.core.outputs import shown_path

    text = str(model)
    if not text or not os.path.isabs(text):
        return text
    shipped = {str(testbed_dir()): TESTBED, str(oracle_dir()): ORACLE, str(testbed_dir("llm")): TESTBED_LLM}
    shipped.update({str(testbed_dir(name[len("testbed-") :])): name for name in LLM_ORACLES})
    return shipped.get(os.path.normpath(text), shown_path(text))


def model_kind(model: str | os.PathLike, hub: bool = False) -> str:
    """The kind of ``model`` from its name alone (nothing loads): ``causal-lm`` for a language model
    (a testbed-llm name, or a directory whose ``config.json`` names a causal LM; ``hub``: a hub id
    counts as one), else ``diffusion``."""
    from erasekit.models.causal_lm import is_lm_name

    return CAUSAL_LM if is_lm_name(model, hub=hub) else DIFFUSION


def kind_of(model) -> str:
    """The kind of a loaded model: ``causal-lm`` for a :class:`~erasekit.models.causal_lm.LanguageModel`,
    else ``diffusion`` (a pipeline)."""
    from erasekit.models.causal_lm import LanguageModel

    return CAUSAL_LM if isinstance(model, LanguageModel) else DIFFUSION


def load_model(model: str | os.PathLike = TESTBED, device: str | None = None, dtype: str | torch.dtype | None = None,
               hub: bool = False):  # fmt: skip
    """Load ``model`` as what its name says it is (:func:`model_kind`): a diffusers pipeline
    (:func:`load_pipeline`) or a causal language model with its tokenizer
    (:func:`~erasekit.models.causal_lm.load_lm`)."""
    if model_kind(model, hub=hub) == CAUSAL_LM:
        from erasekit.models.causal_lm import load_lm

        return load_lm(model, device=device, dtype=dtype)
    return load_pipeline(model, device=device, dtype=dtype)
