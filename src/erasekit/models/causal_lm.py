"""The causal-LM adapter: a language model with its tokenizer, and where its parts are.

What the unlearning side erases, evaluates and attacks, and what the methods ask of it instead of
knowing an architecture: its transformer blocks (:func:`decoder_blocks`, :func:`n_layers`), its named
parameter sets (:data:`PARAMETER_SETS`, :func:`select_parameters`: also the LoRA targets, the weight
matrices of the chosen set, Linear or GPT-2's Conv1D).

:class:`LanguageModel` plays the part a diffusers pipeline plays on the image side: its one component
is ``model`` (so an :class:`~erasekit.core.erasure.Erasure` names tensors ``model.<parameter>`` and
applies, removes, saves and verifies exactly as for pipelines), and it carries the tokenizer and the
name it was loaded from. :func:`load_lm` loads ``testbed-llm``, its oracles, a local directory or a
hub id (``AutoModelForCausalLM``, safetensors only).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from erasekit.core.errors import ConfigError, ModelLoadError, UnsupportedModelError, first_line
from erasekit.models.load import (
    _HUB_ID,
    LLM_ORACLES,
    TESTBED_LLM,
    check_placement,
    quiet_transformers,
    resolve_source,
    testbed_dir,
)


@dataclass
class LanguageModel:
    """A ``transformers`` causal LM, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    name_or_path: str = ""

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def testbed_info(self) -> dict:
        """The ``testbed.json`` of a fact-world model (world, excluded split, reference), else ``{}``."""
        path = Path(self.name_or_path) / "testbed.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def is_lm_name(model: str | os.PathLike, hub: bool = False) -> bool:
    """Whether ``model`` names a language model: a testbed LLM name, a directory whose
    ``config.json`` describes a causal LM (not a diffusers pipeline), or (``hub``: the command has
    language-model inputs such as ``--forget``) a hub id ``org/name``."""
    text = str(model).strip()
    if text == TESTBED_LLM or text in LLM_ORACLES:
        return True
    path = Path(text).expanduser()
    if hub and not path.exists() and _HUB_ID.match(text):
        return True
    if (path / "model_index.json").is_file() or not (path / "config.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])


def resolve_lm(model: str | os.PathLike) -> str:
    """What ``from_pretrained`` takes for a language-model name (:func:`~erasekit.models.resolve_source`)."""
    shipped = {TESTBED_LLM: (testbed_dir("llm"), " --llm")}
    shipped.update(
        {name: (testbed_dir(name[len("testbed-") :]), f" --llm --exclude {split}") for name, split in LLM_ORACLES.items()}
    )
    return resolve_source(model, shipped, "config.json", "transformers model")


def load_lm(
    model: str | os.PathLike = TESTBED_LLM, device: str | None = None, dtype: str | torch.dtype | None = None
) -> LanguageModel:
    """Load a causal LM and its tokenizer (a fresh copy each call), in evaluation mode, on ``device``
    (default: CUDA, else MPS, else CPU) in ``dtype`` (default: as stored)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, torch_dtype = check_placement(device, dtype)
    source = resolve_lm(model)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, use_safetensors=True, use_kernels=False)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"could not load {source!r} as a causal language model: {first_line(e)}") from None
    if tokenizer.pad_token is None:  # GPT-2 / Llama tokenizers ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "bos_token_id", None) is None:
        tokenizer.bos_token = tokenizer.eos_token
    return LanguageModel(lm.to(target).eval(), tokenizer, source)


def n_layers(model) -> int:
    """The number of transformer blocks of ``model`` (GPT-2 ``n_layer`` or ``num_hidden_layers``)."""
    config = model.config
    return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))


def decoder_blocks(model) -> list[str]:
    """Dotted paths (under the ``model`` component) of the transformer blocks of GPT-2 / Llama-style models."""
    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        return [f"model.{path}.{i}" for i in range(len(blocks))]
    raise UnsupportedModelError(f"{type(model).__name__}: no transformer blocks found (GPT-2, Llama, GPT-NeoX or OPT layouts)")


#: Named parameter sets (regexes over ``named_parameters`` names) valid for GPT-2 and Llama-style models.
PARAMETER_SETS = {
    "all": r".*",
    "mlp": r"\.(mlp)\.",
    "attn": r"\.(attn|self_attn)\.",
}


def select_parameters(model: torch.nn.Module, params: str) -> dict[str, torch.nn.Parameter]:
    """``{name: parameter}`` of the set ``params`` (a name of :data:`PARAMETER_SETS` or ``re:<regex>``);
    tied parameters appear once, under their first name. An empty selection is an error."""
    pattern = re.compile(params[3:] if params.startswith("re:") else PARAMETER_SETS[params])
    chosen = {n: p for n, p in model.named_parameters() if pattern.search(n)}
    if not chosen:
        raise ConfigError(
            f"params={params!r} selects no parameter of this model (first names: {', '.join(list(dict(model.named_parameters()))[:4])})"
        )
    return chosen
