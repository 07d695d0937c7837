"""The ``erasekit`` command line: a thin layer over the Python API with the same names."""

from __future__ import annotations

import errno
import functools
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from erasekit import __version__
from erasekit.cli_options import CAUSAL_LM, DIFFUSION, flag, given_names, given_options, model_kind, refuse_inapplicable
from erasekit.core.errors import ErasekitError, InvalidInputError


class OneLineErrors(TyperGroup):
    """The command group, with every usage error (bad option value, unknown option, missing option)
    printed as one line on stderr with exit code 2, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            from typer._click import exceptions as click  # typer >= 0.2x carries its own click
        except ImportError:  # pragma: no cover - older typer uses click itself
            from click import exceptions as click

        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except click.NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help() if e.ctx else str(e))
            code = 2
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            typer.echo(f"error: {_one_line(e.format_message())}{where}", err=True)
            code = 2
        except click.ClickException as e:
            typer.echo(f"error: {_one_line(e.format_message())}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    name="erasekit",
    help="Erase concepts from text-to-image models, measure what was lost and kept, and attack the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
testbed_app = typer.Typer(help="The shipped testbed: a small text-to-image world with exact labels.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'testbed', a local diffusers pipeline directory, or a hub id.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else mps, else cpu).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Weights' precision: float32 (default), float16 or bfloat16.")]
GuardOpt = Annotated[
    Optional[Path],
    typer.Option(help="A guard directory ('erasekit erase --method sld', ...): stacked on --erasure, or applied alone."),
]
JudgeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--judge", help="A registered judge as NAME[:key=value,...], e.g. nudenet or clip:clip=DIR (see 'erasekit judges')."
    ),
]
PromptsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--prompts", help="A prompt file: I2P or case-number CSV, MMA-Diffusion CSV, .txt or .yaml (nothing is downloaded)."
    ),
]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="With --prompts: the first N rows (after --where).")]
WhereOpt = Annotated[
    Optional[list[str]],
    typer.Option("--where", help="With --prompts: keep rows with column=value (repeatable), e.g. categories=sexual."),
]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, help="Denoising steps (default: the model's recommendation).")]
BatchSizeOpt = Annotated[
    Optional[int], typer.Option("--batch-size", min=1, max=4096, help="Images drawn per batch (default 128; lower it on a GPU).")
]


def _finite(value: float | None) -> float | None:
    """Option callback: NaN and infinity pass typer's min/max checks, so they are refused here."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


GuidanceOpt = Annotated[
    Optional[float],
    typer.Option(
        "--guidance", min=0.0, callback=_finite, help="Classifier-free guidance scale (default: the model's recommendation)."
    ),
]


def _set_items(items: list[str] | None, form: str, scoped: bool = False) -> list[tuple[str, str]]:
    """``(key, value)`` of each ``--set key=value`` (stripped); with ``scoped`` the key must be
    ``method.key``. A malformed item is a one-line error naming the expected ``form``."""
    from erasekit.core.errors import ConfigError

    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if scoped:
            method, dot, name = key.partition(".")
            key = f"{method.strip()}.{name.strip()}" if dot and method.strip() and name.strip() else ""
        if not sep or not key.strip():
            raise ConfigError(f"--set expects {form}, got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


def friendly(fn):
    """Turn erasekit's own errors into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ErasekitError as e:
            typer.echo(f"error: {_one_line(str(e))}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # the disk or the system said no: read-only, full, permission denied...
            if e.errno == errno.EPIPE:  # the reader went away (`erasekit methods | head`): not an error to print
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            typer.echo(f"error: {e.strerror or _one_line(str(e)) or type(e).__name__}{where}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted (a training run continues from its checkpoints with --resume)", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _one_line(text: str) -> str:
    """Error text on a single line (a library's multi-line message is joined)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _quiet_libraries() -> None:
    """Keep third-party chatter (load bars, deprecation notes) out of the user's terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - logging tweaks are best effort
        pass


def _version(value: bool) -> None:
    if value:
        typer.echo(f"erasekit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _quiet_libraries()
    _launched_check(ctx.invoked_subcommand)


def _launched_check(command: str | None) -> None:
    """Under torchrun / accelerate launch: refuse a command that does not shard (one line, exit 2), and
    keep every rank but 0 quiet (rank 0 prints and writes; :mod:`erasekit.core.parallel`)."""
    from erasekit.core import parallel

    try:
        shards = parallel.launched()
    except ErasekitError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if shards is None:
        return
    if command not in parallel.SHARDED_COMMANDS:
        typer.echo(f"error: '{command}' runs in one process; torchrun / accelerate launch shard "
                   f"{', '.join(parallel.SHARDED_COMMANDS)} (run it without the launcher)", err=True)  # fmt: skip
        raise typer.Exit(2)
    if not shards.main:  # rank 0 speaks for all: a unit failing on another rank fails rank 0 with its message
        quiet = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank's process
        sys.stdout = sys.stderr = quiet


@app.command()
@friendly
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image grid (.png).")],
    model: ModelOpt = "testbed",
    n: Annotated[int, typer.Option("-n", "--num-images", min=1, max=1024, help="Number of images (seeds seed..seed+n-1).")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="First seed.")] = 0,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    negative_prompt: Annotated[
        Optional[str], typer.Option(help="Negative prompt (the unconditional branch of guidance).")
    ] = None,
    labels: Annotated[bool, typer.Option(help="Caption each image with the testbed classifier's labels (testbed only).")] = True,
    erasure: Annotated[Optional[Path], typer.Option(help="Erasure directory to apply for the images.")] = None,
    guard: GuardOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Generate N images of one prompt with fixed seeds and save them as a grid."""
    from erasekit.api import generate_grid

    refuse_inapplicable(ctx, model_kind(model), repr(model))

    path = generate_grid(
        model,
        prompt,
        out,
        n=n,
        seed=seed,
        steps=steps,
        guidance=guidance,
        negative_prompt=negative_prompt,
        labels=labels,
        device=device,
        dtype=dtype,
        erasure=erasure,
        guard=guard,
    )
    typer.echo(f"wrote {path}")


@app.command()
@friendly
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the demo's outputs.")] = Path("erasekit-demo"),
    seeds: Annotated[int, typer.Option(min=1, max=64, help="Seeds per prompt for the quality-gate summary.")] = 2,
    llm: Annotated[
        bool,
        typer.Option("--llm", help="The language-model demo: NPO unlearns forget01 from testbed-llm, evaluated and attacked."),
    ] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """The main job on the testbed: labelled grid, quality gate, UCE erasure of a shape and a character, before/after evaluation."""
    from erasekit.api import run_demo

    refuse_inapplicable(ctx, CAUSAL_LM if llm else DIFFUSION, "the --llm demo's model" if llm else "the demo's model")
    given = given_names(ctx)
    for line in run_demo(out if "out" in given else None, seeds=seeds if "seeds" in given else None, device=device, dtype=dtype,
                         llm=llm):  # fmt: skip
        typer.echo(line)


@app.command()
@friendly
def erase(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the erasure (delta + metadata).")],
    model: ModelOpt = "testbed",
    method: Annotated[
        Optional[str],
        typer.Option(help="Method name (see 'erasekit methods'; default: uce for image pipelines, npo for language models)."),
    ] = None,
    concept: Annotated[Optional[list[str]], typer.Option("--concept", "-c", help="Concept to erase (repeatable).")] = None,
    anchor: Annotated[Optional[str], typer.Option(help="Neutral destination for every --concept ('' = empty prompt).")] = None,
    preserve: Annotated[Optional[list[str]], typer.Option("--preserve", help="Concept to keep unchanged (repeatable).")] = None,
    trigger: Annotated[
        Optional[list[str]],
        typer.Option("--trigger", help="Implicit concepts (no word names them): a prompt whose images show it (repeatable)."),
    ] = None,
    request: Annotated[
        Optional[Path], typer.Option(help="YAML request file (targets, anchors, synonyms, prompts, preserve, templates).")
    ] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method parameter as key=value (repeatable).")] = None,
    lora_rank: Annotated[
        Optional[int], typer.Option("--lora-rank", help="Training methods: output a LoRA of this rank (diffusers format).")
    ] = None,
    checkpoints: Annotated[
        Optional[Path],
        typer.Option(
            help="Training methods: checkpoint directory (default: OUT.checkpoints, removed once the erasure is saved)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Training methods: continue from the last checkpoint of the same run.")
    ] = False,
    stop_at_ua: Annotated[
        Optional[float],
        typer.Option(
            "--stop-at-ua",
            min=0.0,
            max=1.0,
            callback=_finite,
            help="Training methods on the testbed: stop once UA reaches this share (evaluated every --set eval_every=N steps).",
        ),
    ] = None,
    min_ira: Annotated[
        Optional[float],
        typer.Option(
            "--min-ira", min=0.0, max=1.0, callback=_finite, help="With --stop-at-ua: also require IRA of at least this share."
        ),
    ] = None,
    forget: Annotated[
        Optional[str],
        typer.Option(
            help="Language models: a forget split of testbed-llm (forget01, forget05, forget10), a JSON/JSONL/CSV file of "
            "question-answer pairs, or a datasets save_to_disk directory (TOFU)."
        ),
    ] = None,
    retain: Annotated[
        Optional[Path],
        typer.Option(
            help="Language models: question-answer pairs to keep, a file or dataset directory (default for a split: its retain authors)."
        ),
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Erase concepts from a model (or unlearn facts from a language model: --model testbed-llm --forget forget01)
    with a named method and save the result (only the changed tensors, or a LoRA)."""
    from erasekit.api.erasing import erase_to
    from erasekit.core.request import ErasureRequest
    from erasekit.report.console import erasure_lines

    kind = model_kind(model, hub=forget is not None)
    refuse_inapplicable(ctx, kind, repr(model))
    params: dict[str, object] = dict(_set_items(set_, "key=value"))
    if lora_rank is not None:
        if "lora_rank" in params:
            raise InvalidInputError("pass the LoRA rank once: --lora-rank N or --set lora_rank=N, not both")
        params["lora_rank"] = lora_rank
    # an image request (its options are refused above on a language model)
    named = concept or anchor is not None or preserve or request or trigger
    req = ErasureRequest.from_cli(concept or [], anchor, preserve, str(request) if request else None, trigger) if named else None
    result = erase_to(out, model, method, req, checkpoints=checkpoints, resume=resume, stop_at_ua=stop_at_ua, min_ira=min_ira,
                      device=device, dtype=dtype, forget=forget, retain=retain, **params)  # fmt: skip
    for line in erasure_lines(result, out):
        typer.echo(line)


@app.command()
@friendly
def export(
    ctx: typer.Context,
    erasure: Annotated[Path, typer.Argument(help="An erasure directory written by 'erasekit erase'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the complete diffusers pipeline.")],
    model: ModelOpt = "testbed",
    force: Annotated[
        bool, typer.Option("--force", help="Apply even if the model's weights differ from the erasure's base.")
    ] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Apply an erasure to its base model and write a complete pipeline (or transformers model) directory, loadable with from_pretrained."""
    from erasekit.api import export_pipeline

    refuse_inapplicable(ctx, model_kind(model), repr(model))
    path = export_pipeline(erasure, model, out, force=force, device=device, dtype=dtype)
    typer.echo(f"wrote {path}")


@app.command()
@friendly
def evaluate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the evaluation report (JSON).")],
    model: ModelOpt = "testbed",
    erasure: Annotated[
        Optional[Path], typer.Option(help="Erasure directory to evaluate (omit to measure the base model).")
    ] = None,
    guard: GuardOpt = None,
    concept: Annotated[
        Optional[list[str]], typer.Option("--concept", "-c", help="Target concept(s) (default: the erasure's).")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, max=256, help="Seeds per prompt.")] = 4,
    contexts: Annotated[int, typer.Option(min=1, max=64, help="Attribute contexts per concept.")] = 12,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    split: Annotated[Optional[str], typer.Option(help="Language models: the forget split (default: the erasure's).")] = None,
    oracle: Annotated[
        Optional[str], typer.Option(help="Language models: the oracle retrained without the split (default: the shipped one).")
    ] = None,
    judge: JudgeOpt = None,
    prompts: PromptsOpt = None,
    retain_prompts: Annotated[
        Optional[Path],
        typer.Option("--retain-prompts", help="With --prompts: prompts whose images should not change (e.g. COCO captions)."),
    ] = None,
    limit: LimitOpt = None,
    where: WhereOpt = None,
    samples: Annotated[Optional[int], typer.Option(min=1, max=64, help="With --prompts: images per row (default 1).")] = None,
    fidelity: Annotated[
        Optional[str],
        typer.Option(help="With --retain-prompts: a CLIPScore judge for CLIP score and FD, e.g. clip-score:clip=DIR."),
    ] = None,
    cache: Annotated[
        Optional[Path],
        typer.Option(help="Keep every drawn image here; a rerun (or a killed run, sharded or not) draws only what is missing."),
    ] = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Measure erasure (UA), retention (IRA, CRA), fidelity and cost on the testbed, before and after
    (any pipeline with --judge and --prompts FILE; on testbed-llm: forget, retain, forget quality,
    utility and privacy leak against the oracle)."""
    from erasekit.api import evaluate as evaluate_api
    from erasekit.report.console import evaluation_lines

    refuse_inapplicable(ctx, model_kind(model), repr(model))
    given = given_names(ctx)
    report = evaluate_api(model, erasure, concept, out=out, seeds=seeds if "seeds" in given else None,
                          contexts=contexts if "contexts" in given else None, steps=steps, guidance=guidance, split=split,
                          oracle=oracle, device=device, dtype=dtype, judge=judge, prompts=prompts, retain_prompts=retain_prompts,
                          limit=limit, where=where, samples=samples, fidelity=fidelity, cache=cache, guard=guard,
                          batch_size=batch_size)  # fmt: skip
    for line in evaluation_lines(report, out):
        typer.echo(line)


@app.command()
@friendly
def bench(
    ctx: typer.Context,
    methods_: Annotated[
        Optional[str],
        typer.Option("--methods", help="Comma-separated method names (default: uce,time,rece,speed; on testbed-llm: all)."),
    ] = None,
    concepts: Annotated[
        Optional[str],
        typer.Option(
            "--concepts", help="Comma-separated testbed concepts (default: star,striped,red,zorbo; forget splits on testbed-llm)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Directory for the per-run JSON (default: benchmarks/results/testbed, or .../llm)."),
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option("--report", help="Markdown report to (re)write (default: docs/results.md; with --judge: OUT/results.md)."),
    ] = None,
    model: ModelOpt = "testbed",
    seeds: Annotated[int, typer.Option(min=1, max=64, help="Seeds per prompt.")] = 4,
    contexts: Annotated[int, typer.Option(min=1, max=64, help="Attribute contexts per concept.")] = 12,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method parameter as method.key=value (repeatable).")] = None,
    attacks_: Annotated[
        Optional[str],
        typer.Option("--attacks", help="Also attack every erasure, the base model and the oracle: names, 'fast' or 'all'."),
    ] = None,
    robustness: Annotated[
        Path, typer.Option("--robustness", help="Robustness table to (re)write with --attacks (a .png plot beside it).")
    ] = Path("docs/robustness.md"),
    judge: JudgeOpt = None,
    prompts: PromptsOpt = None,
    retain_prompts: Annotated[
        Optional[Path], typer.Option("--retain-prompts", help="With --prompts: prompts whose images should not change.")
    ] = None,
    limit: LimitOpt = None,
    where: WhereOpt = None,
    samples: Annotated[Optional[int], typer.Option(min=1, max=64, help="With --prompts: images per row (default 1).")] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Skip the runs recorded under --out with the same settings (finish a grid cut short)."),
    ] = False,
    backend: Annotated[
        str, typer.Option("--backend", help="local (this process, or the ranks torchrun starts) or ray (each run a Ray task).")
    ] = "local",
    address: Annotated[
        Optional[str], typer.Option("--address", help="With --backend ray: 'auto' (the cluster running here) or ray://HOST:PORT.")
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Erase each concept with each method, evaluate every run, and write JSON plus a results table (with --attacks: a robustness table).

    On any pipeline with --judge NAME --prompts FILE: every method erases every concept and the judge
    measures each erasure on the prompt file (JSON per run under --out, default bench-results/, and a table).

    With --model testbed-llm: unlearn each forget split (--concepts, default forget01,forget05) with each
    language-model method (--methods, default all), evaluate against the base model and the oracle, and write
    the "language models" sections of the tables."""
    from erasekit.api import bench as bench_api
    from erasekit.report.console import bench_lines

    refuse_inapplicable(ctx, model_kind(model), repr(model))
    given = given_names(ctx)
    params: dict[str, dict[str, str]] = {}
    for key, value in _set_items(set_, "method.key=value (e.g. esd.iterations=100)", scoped=True):
        method, _, name = key.partition(".")
        params.setdefault(method, {})[name] = value

    def listed(text: str | None) -> list[str] | None:
        return [t.strip() for t in text.split(",") if t.strip()] if text is not None else None

    runs = bench_api(listed(methods_), listed(concepts), out_dir=out, report=report if report is not None else "default",
                     model=model, seeds=seeds if "seeds" in given else None, contexts=contexts if "contexts" in given else None,
                     params=params, device=device, dtype=dtype, attacks=listed(attacks_), robustness=robustness, judge=judge,
                     prompts=prompts, retain_prompts=retain_prompts, limit=limit, where=where, samples=samples, resume=resume,
                     backend=backend, address=address)  # fmt: skip
    for line in bench_lines(runs):
        typer.echo(line)
    typer.echo(f"wrote {len(runs)} runs" + (f" and {robustness}" if attacks_ else ""))


def _shown(default) -> str:
    """A parameter's default for a listing: its repr, or the count of a list of sentences."""
    if isinstance(default, (tuple, list)) and len(repr(default)) > 40:
        return f"<{len(default)} items>"
    return repr(default)


@app.command()
@friendly
def methods() -> None:
    """List the erasure methods with their families and parameters."""
    from erasekit.core.registry import all_methods

    for spec in all_methods():
        uses = f"; uses: {', '.join(sorted(spec.accepts))}" if spec.accepts else ""
        typer.echo(f"{spec.name:<10} {spec.kind:<12} {spec.summary}  [families: {', '.join(spec.families)}{uses}]")
        for name, tp, default, help_ in spec.parameters():
            typer.echo(f"    {name:<16} {tp:<28} default {_shown(default):<10} {help_}")


@app.command()
@friendly
def attack(
    ctx: typer.Context,
    concept: Annotated[
        Optional[str], typer.Option("--concept", "-c", help="Concept to bring back (default: the erasure's first).")
    ] = None,
    attack_: Annotated[
        str, typer.Option("--attack", "-a", help="Attack name, comma-separated names, 'fast' or 'all' (see 'erasekit attacks').")
    ] = "fast",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the attack report (JSON).")] = None,
    model: ModelOpt = "testbed",
    erasure: Annotated[
        Optional[Path], typer.Option(help="Erasure directory to attack (omit to attack the model itself).")
    ] = None,
    guard: GuardOpt = None,
    budget: Annotated[Optional[int], typer.Option(min=0, help="Budget in the attack's unit (default: the attack's).")] = None,
    seeds: Annotated[Optional[int], typer.Option(min=1, max=256, help="Seeds per prompt (default: about 24 trials).")] = None,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompt", "-p", help="A prompt that shows the concept (repeatable; default on the testbed: its evaluation prompts)."
        ),
    ] = None,
    reference: Annotated[
        Optional[str],
        typer.Option(help="Model that draws the concept (default: the model without the erasure; an oracle names its own)."),
    ] = None,
    replay: Annotated[
        Optional[Path], typer.Option("--replay", help="Re-run what an earlier attack found (its JSON) on this model / erasure.")
    ] = None,
    grid: Annotated[Optional[Path], typer.Option(help="Also save every trial's judged image as a grid (.png).")] = None,
    judge: JudgeOpt = None,
    prompt_file: PromptsOpt = None,
    limit: LimitOpt = None,
    where: WhereOpt = None,
    cache: Annotated[
        Optional[Path],
        typer.Option(
            help="Keep the trials' plain images and every finished attack here; a rerun (or a killed run) makes only what is missing."
        ),
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Attack parameter as key=value (repeatable, one attack).")
    ] = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Attack an erased (or any) model and report how often the concept comes back (ASR with its interval)."""
    from erasekit.api.attacking import attack as attack_api
    from erasekit.api.attacking import replay as replay_api

    refuse_inapplicable(ctx, model_kind(model), repr(model))
    params = dict(_set_items(set_, "key=value (e.g. lr=0.01)"))
    if replay is not None:
        searched = {"attack_", "concept", "budget", "seeds", "prompt", "reference", "set_", "steps", "guidance", "judge",
                    "prompt_file", "limit", "where", "cache", "batch_size"}  # fmt: skip
        clash = [p for p in given_options(ctx) if p.name in searched]
        if clash:
            raise InvalidInputError(
                f"--replay re-runs the report's own attack, concept, trials and settings, so {flag(clash[0])} does not "
                "apply; pass only --model, --erasure, --guard, --out, --grid, --device and --dtype with it"
            )
        results = [replay_api(replay, model, erasure, out=out, device=device, dtype=dtype, grid=grid, guard=guard)]
    else:
        found = attack_api(model, erasure, attack_, concept, budget=budget, seeds=seeds, params=params, prompts=prompt,
                           reference=reference, out=out, steps=steps, guidance=guidance, device=device, dtype=dtype,
                           grid=grid, judge=judge, prompt_file=prompt_file, limit=limit, where=where, cache=cache,
                           guard=guard, batch_size=batch_size)  # fmt: skip
        results = found if isinstance(found, list) else [found]
    for r in results:
        typer.echo(r.summary())
    if grid is not None:
        typer.echo(f"wrote {grid}")
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command()
@friendly
def attacks() -> None:
    """List the attacks with their budget unit, default budget and parameters."""
    from erasekit.core.registry import all_attacks

    for spec in all_attacks():
        diffusion = spec.family == "diffusion"
        tags = ", ".join(t for t, on in (("fast", spec.fast), ("text encoder only", not spec.denoiser and diffusion),
                                         (" and ".join(spec.kinds) + " only", diffusion and len(spec.kinds) < 4),
                                         ("language models", spec.family == "causal-lm")) if on)  # fmt: skip
        typer.echo(
            f"{spec.name:<18} {spec.kind:<9} budget {spec.default_budget} {spec.budget_unit:<12} {spec.summary}"
            + (f"  [{tags}]" if tags else "")
        )
        for name, tp, default, help_ in spec.parameters():
            if name != "budget":
                typer.echo(f"    {name:<16} {tp:<10} default {_shown(default):<10} {help_}")


@app.command()
@friendly
def report(
    ctx: typer.Context,
    results: Annotated[
        list[Path], typer.Argument(help="Result JSON files, PNG images, or directories of them (a demo or bench folder).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write (self-contained, images embedded).")],
    title: Annotated[str, typer.Option(help="The page's title.")] = "erasekit report",
) -> None:
    """One self-contained HTML report from result JSON: metrics with intervals, judges, images, and plots."""
    from erasekit.report.html import write_html_report

    refuse_inapplicable(ctx, DIFFUSION, "the report")
    typer.echo(f"wrote {write_html_report(results, out, title)}")


@app.command()
@friendly
def judges() -> None:
    """List the judges: the kinds of model each judges, what it reads and the options it takes."""
    from erasekit.core.registry import all_judges

    for spec in all_judges():
        options = f"  options: {', '.join(spec.options)}" if spec.options else ""
        where = "" if spec.offline else "  [needs weights you bring]"
        typer.echo(f"{spec.name:<14} {spec.judges:<8} {', '.join(spec.kinds):<20} {spec.summary}{options}{where}")


@testbed_app.command("path")
@friendly
def testbed_path() -> None:
    """Print the directory of the shipped testbed pipeline."""
    from erasekit.models import resolve_model

    typer.echo(resolve_model("testbed"))


@testbed_app.command("check")
@friendly
def testbed_check(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the gate report (JSON).")],
    model: ModelOpt = "testbed",
    seeds: Annotated[int, typer.Option(min=1, max=256, help="Seeds per prompt (the gate needs at least 8).")] = 8,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    classifier: Annotated[Optional[Path], typer.Option(help="Judge weights (default: the shipped testbed classifier).")] = None,
    llm: Annotated[bool, typer.Option("--llm", help="Gate the fact-world language model (default model: testbed-llm).")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Run the testbed quality gate and write its JSON report (exit code 1 when it fails)."""
    from erasekit.api import check_testbed
    from erasekit.report.console import gate_lines

    refuse_inapplicable(
        ctx, CAUSAL_LM if llm else model_kind(model), "testbed-llm" if llm and model == "testbed" else repr(model)
    )
    given = given_names(ctx)
    model = "testbed-llm" if llm and "model" not in given else model  # --llm: the fact-world model unless one is named
    if llm and model_kind(model) != CAUSAL_LM:
        raise InvalidInputError(f"--llm gates a language model; {model!r} is an image pipeline (drop --llm)")
    report = check_testbed(out, model=model, seeds=seeds if "seeds" in given else None, steps=steps, guidance=guidance,
                           classifier=classifier, device=device, dtype=dtype)  # fmt: skip
    for line in gate_lines(report, out):
        typer.echo(line)
    if not report["passed"]:
        raise typer.Exit(1)


@testbed_app.command("train")
@friendly
def testbed_train(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option(help="Working directory for data, checkpoints and logs.")] = Path("runs/testbed"),
    out: Annotated[Optional[Path], typer.Option(help="Where to export the pipeline (default: WORKDIR/pipeline).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoints in WORKDIR.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="A few steps of every stage (to check the set-up).")] = False,
    unet_steps: Annotated[Optional[int], typer.Option(min=1, help="Override the number of UNet training steps.")] = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option("--exclude", help="Leave every image of this concept out of the data (repeatable): trains an oracle."),
    ] = None,
    retrain_codec: Annotated[
        bool,
        typer.Option("--retrain-codec", help="With --exclude: train the judge and VAE too instead of reusing the testbed's."),
    ] = False,
    codec: Annotated[
        Optional[str],
        typer.Option(
            "--codec",
            help="Reuse this testbed's judge and VAE instead of training them (e.g. testbed; --exclude reuses it by default).",
        ),
    ] = None,
    llm: Annotated[
        bool,
        typer.Option(
            "--llm", help="Train the fact-world language model instead (--exclude forget01|forget05|forget10: its oracle)."
        ),
    ] = False,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="With --llm: override the number of epochs.")] = None,
    text_encoder: Annotated[
        Optional[str],
        typer.Option(
            "--text-encoder",
            help="joint: trained with the UNet (the shipped testbed); contrastive: pre-trained CLIP-style, then frozen.",
        ),
    ] = None,
    padding: Annotated[
        Optional[str],
        typer.Option(
            "--padding",
            help="What the UNet trains on after a caption's end: prompt (its own padding) or shuffled (another caption's).",
        ),
    ] = None,
    token_loss: Annotated[
        Optional[float],
        typer.Option(
            "--token-loss",
            min=0.0,
            help="With --text-encoder contrastive: weight of a per-token loss (each state names the attributes said so far).",
        ),
    ] = None,
) -> None:
    """Train the testbed from scratch (judge, VAE, text encoder + UNet) on the CPU; over an hour on 2 cores.

    With --exclude, train an oracle: the same world without the excluded concepts' images. It reuses
    the shipped testbed's judge and VAE (so both are judged alike) and retrains text encoder and UNet."""
    from erasekit.api.commands import train_testbed

    refuse_inapplicable(ctx, CAUSAL_LM if llm else DIFFUSION, "the --llm testbed" if llm else "the image testbed")
    given = given_names(ctx)
    path = train_testbed(workdir if "workdir" in given else None, out, resume=resume, smoke=smoke, exclude=exclude,
                         unet_steps=unet_steps, retrain_codec=retrain_codec, epochs=epochs, llm=llm,
                         text_encoder=text_encoder, padding=padding, codec=codec, token_loss=token_loss,
                         log=lambda m: typer.echo(m, err=True))  # fmt: skip
    typer.echo(f"{'fact-world model' if llm else 'testbed pipeline'} written to {path}")


def run() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
