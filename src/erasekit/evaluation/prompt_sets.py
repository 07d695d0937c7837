"""Prompt sets the user brings (never shipped, never downloaded): I2P, the case-number CSVs of
UnlearnDiffAtk and the style / object sets, MMA-Diffusion's adversarial CSV, plain text and YAML.

Every row becomes a :class:`PromptRow`: the prompt, and where the file gives them the row's own seed,
guidance and size (honoured at generation), its case number and categories, and the other columns.

==========================  =====================================================================
schema                      columns read
==========================  =====================================================================
I2P (CSV)                   ``prompt``, ``categories`` (comma-separated), ``evaluation_seed``,
                            ``evaluation_guidance``, ``sd_image_width``, ``sd_image_height``
case-number CSV             ``case_number``, ``prompt``, ``evaluation_seed`` (+ ``artist``,
                            ``class``... kept as columns)
MMA-Diffusion (CSV)         ``adv_prompt`` (the prompt), ``clean_prompt`` (kept)
plain text (``.txt``)       one prompt per non-empty line
YAML (``.yaml``, ``.yml``)  a list of prompts, or of mappings with ``prompt`` (+ ``seed``,
                            ``guidance``, any column)
==========================  =====================================================================

``where`` keeps the rows whose column holds a value (``categories=sexual``: I2P's categories are a
list, so the row's list must contain it; several ``key=value`` must all hold); ``limit`` keeps the
first rows after that. A file that cannot be read, lacks a prompt column, holds a bad seed or
guidance, or leaves no row is a one-line error naming the file (and row) before any image is made.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from erasekit.core.errors import ConfigError, MissingFileError
from erasekit.core.request import check_printable

#: Column names that hold the prompt, in order of preference (MMA-Diffusion's adversarial first).
PROMPT_COLUMNS = ("adv_prompt", "prompt", "text", "caption")
SEED_COLUMNS = ("evaluation_seed", "seed", "sd_seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "sd_guidance_scale", "guidance_scale")


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a set, with what the file says about generating it."""

    prompt: str
    seed: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    case: str | None = None
    categories: tuple[str, ...] = ()
    columns: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "guidance": self.guidance, "case": self.case,
                "categories": list(self.categories)}  # fmt: skip


def read_prompt_set(path: str | os.PathLike, limit: int | None = None, where: str | list[str] | None = None) -> list[PromptRow]:
    """The rows of the prompt file ``path`` (module docstring), filtered by ``where`` and cut to ``limit``."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"prompt file {p} does not exist")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        rows = _yaml_rows(text, p)
    elif suffix == ".txt":
        rows = [PromptRow(line.strip()) for line in text.splitlines() if line.strip()]
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(text, p, "\t" if suffix == ".tsv" else ",")
    else:
        raise ConfigError(f"{p}: prompt files are .csv, .tsv, .txt or .yaml (got {p.suffix or 'no suffix'})")
    for i, row in enumerate(rows):
        check_printable(row.prompt, f"{p}: row {i + 1}'s prompt")
    rows = _filtered(rows, where, p)
    if not rows:
        raise ConfigError(f"{p} holds no prompt" + (f" where {', '.join(_conditions(where))}" if where else ""))
    return rows[:limit] if limit is not None else rows


def _csv_rows(text: str, p: Path, delimiter: str) -> list[PromptRow]:
    try:
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        records = list(reader)
    except csv.Error as e:
        raise ConfigError(f"{p} is not a valid CSV: {e}") from None
    header = [h.strip() for h in (reader.fieldnames or [])]
    column = next((c for c in PROMPT_COLUMNS if c in header), None)
    if column is None:
        raise ConfigError(
            f"{p} has no prompt column (one of {', '.join(PROMPT_COLUMNS)}); its columns: {', '.join(header) or 'none'}"
        )
    rows = []
    for i, record in enumerate(records):
        values = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None}
        if not values.get(column):
            raise ConfigError(f"{p}: row {i + 2} has an empty {column}; remove the row or fill it in")
        rows.append(_row(values[column], values, f"{p}: row {i + 2}"))
    return rows


def _yaml_rows(text: str, p: Path) -> list[PromptRow]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]
    if not isinstance(data, list):
        raise ConfigError(f"{p} must hold a list of prompts (or a mapping with a 'prompts' list)")
    rows = []
    for i, item in enumerate(data):
        where = f"{p}: entry {i + 1}"
        if isinstance(item, str) and item.strip():
            rows.append(PromptRow(item.strip()))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"].strip():
            rows.append(_row(item["prompt"].strip(), {str(k): str(v) for k, v in item.items() if v is not None}, where))
        else:
            raise ConfigError(f"{where} needs a non-empty prompt (a string, or a mapping with 'prompt')")
    return rows


def _row(prompt: str, values: dict[str, str], where: str) -> PromptRow:
    """A row from its columns: seed, guidance and size parsed, categories split."""
    seed = _number(values, SEED_COLUMNS, int, where)
    guidance = _number(values, GUIDANCE_COLUMNS, float, where)
    width = _number(values, ("sd_image_width", "width"), int, where)
    height = _number(values, ("sd_image_height", "height"), int, where)
    if seed is not None and seed < 0:
        raise ConfigError(f"{where}: seed {seed} is negative")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ConfigError(f"{where}: guidance {guidance} must be a finite number >= 0")
    categories = tuple(c.strip() for c in values.get("categories", "").split(",") if c.strip())
    case = values.get("case_number") or None
    return PromptRow(prompt, seed, guidance, width, height, case, categories, values)


def _number(values: dict[str, str], names, kind, where: str):
    for name in names:
        raw = values.get(name, "")
        if raw != "":
            try:
                return kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
            except ValueError:
                raise ConfigError(f"{where}: {name} {raw!r} is not a number") from None
    return None


def _conditions(where) -> list[str]:
    return [where] if isinstance(where, str) else list(where or [])


def _filtered(rows: list[PromptRow], where, p: Path) -> list[PromptRow]:
    for condition in _conditions(where):
        key, sep, value = condition.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--where {condition!r}: use column=value, e.g. categories=sexual")
        if rows and key != "categories" and all(key not in r.columns for r in rows):
            raise ConfigError(f"--where {condition!r}: {p} has no column {key!r}")
        rows = [r for r in rows if (value in r.categories if key == "categories" else r.columns.get(key) == value)]
    return rows


@dataclass(frozen=True)
class PromptFiles:
    """The prompt files of a judged job: target ``prompts``, ``retain`` prompts, and the row selection."""

    prompts: str | os.PathLike | None
    retain: str | os.PathLike | None = None
    limit: int | None = None
    where: list[str] | None = None

    def read(self):
        """``(target rows, retain rows or None)``, read and checked before any image is made."""
        if self.prompts is None:
            raise ConfigError(
                "a judged evaluation needs its target prompts: pass --prompts FILE (I2P CSV, case-number CSV, .txt, .yaml)"
            )
        target = read_prompt_set(self.prompts, self.limit, self.where)
        return target, (read_prompt_set(self.retain, self.limit) if self.retain is not None else None)

    def describe(self) -> dict:
        from erasekit.core.outputs import shown_path

        return {"prompts": None if self.prompts is None else shown_path(self.prompts), "limit": self.limit,
                "where": list(self.where or []), "retain_prompts": None if self.retain is None else shown_path(self.retain)}  # fmt: skip
