"""No option is ever accepted and silently ignored: every command x option x model kind either reaches
the job (the call the command makes changes) or is refused with one line and exit 2, before any work.

The jobs themselves are replaced by recorders (nothing loads or runs), so the whole matrix takes
seconds; the declaration it checks is :data:`erasekit.cli_options.SCOPES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.cli_options import CAUSAL_LM, DIFFUSION, SCOPES, SELECTORS

runner = CliRunner()
KINDS = (DIFFUSION, CAUSAL_LM)

#: The one job each command calls, for either kind (module path, attribute): the API dispatches on
#: the kind, so the command has no branch of its own.
ONE_JOB = {
    "generate": ["erasekit.api:generate_grid"],
    "report": ["erasekit.report.html:write_html_report"],
    "demo": ["erasekit.api:run_demo"],
    "erase": ["erasekit.api.erasing:erase_to"],
    "export": ["erasekit.api:export_pipeline"],
    "evaluate": ["erasekit.api:evaluate"],
    "bench": ["erasekit.api:bench"],
    "attack": ["erasekit.api.attacking:attack", "erasekit.api.attacking:replay"],
    "testbed check": ["erasekit.api:check_testbed"],
}
JOBS = {(command, kind): targets for command, targets in ONE_JOB.items() for kind in KINDS}
#: ``testbed train`` runs the API's ``train_testbed``, which builds one trainer per kind: those are recorded.
JOBS[("testbed train", DIFFUSION)] = ["erasekit.testbeds.image.train:Trainer"]
JOBS[("testbed train", CAUSAL_LM)] = ["erasekit.testbeds.facts.train:LLMTrainer"]

LM_MODEL = ["--model", "testbed-llm"]


def base_args(command: str, kind: str, t: Path) -> list[str]:
    """The smallest invocation of ``command`` on a model of ``kind``."""
    lm = kind == CAUSAL_LM
    return {
        "generate": ["generate", "-p", "a star", "-o", str(t / "g.png"), *(LM_MODEL if lm else [])],
        "report": ["report", str(t / "r.json"), "-o", str(t / "rep.html")],
        "demo": ["demo", *(["--llm"] if lm else [])],
        "erase": ["erase", "-o", str(t / "e"), *([*LM_MODEL, "--forget", "forget01"] if lm else ["-c", "star"])],
        "export": ["export", str(t / "e"), "-o", str(t / "x"), *(LM_MODEL if lm else [])],
        "evaluate": ["evaluate", "-o", str(t / "r.json"), *(LM_MODEL if lm else [])],
        "bench": ["bench", *(LM_MODEL if lm else [])],
        "attack": ["attack", *(LM_MODEL if lm else [])],
        "testbed check": ["testbed", "check", "-o", str(t / "gate.json"), *(["--llm"] if lm else [])],
        "testbed train": ["testbed", "train", "--workdir", str(t / "w"), *(["--llm"] if lm else [])],
    }[command]


def sample(command: str, option: str, kind: str, t: Path, base: list[str]) -> tuple[list[str], list[str]]:
    """``(without, with)``: two invocations that differ only in ``option`` set to a non-default value."""
    lm = kind == CAUSAL_LM
    other_model = "testbed-llm-oracle-forget01" if lm else "testbed-oracle"
    (t / "req.yaml").write_text("targets: [circle]\n")
    common = {
        "out": ["-o", str(t / "other")],
        "model": ["--model", other_model],
        "device": ["--device", "cpu"],
        "dtype": ["--dtype", "bfloat16"],
        "steps": ["--steps", "2"],
        "guidance": ["--guidance", "2.5"],
        "seeds": ["--seeds", "3"],
        "contexts": ["--contexts", "3"],
        "set_": ["--set", "lamb=0.1"],
        "concept": ["-c", "forget05" if lm else "circle"],
        "erasure": ["--erasure", str(t / "e")],
        "guard": ["--guard", str(t / "g")],
        "resume": ["--resume"],
    }
    specific = {
        "generate": {"prompt": ["-p", "a circle"], "n": ["-n", "2"], "seed": ["--seed", "3"],
                     "negative_prompt": ["--negative-prompt", "red"], "labels": ["--no-labels"]},
        "erase": {"method": ["--method", "ga" if lm else "esd"], "anchor": ["--anchor", "a shape"],
                  "preserve": ["--preserve", "circle"], "trigger": ["--trigger", "a star"], "lora_rank": ["--lora-rank", "4"],
                  "checkpoints": ["--checkpoints", str(t / "ck")], "stop_at_ua": ["--stop-at-ua", "0.5"],
                  "forget": ["--forget", "forget05"], "retain": ["--retain", str(t / "retain.json")],
                  "request": (base, ["erase", "-o", str(t / "e"), "--request", str(t / "req.yaml")]),
                  "min_ira": (base + ["--stop-at-ua", "0.5"], base + ["--stop-at-ua", "0.5", "--min-ira", "0.5"])},
        "export": {"erasure": (base, [base[0], str(t / "e2"), *base[2:]]), "force": ["--force"]},
        "report": {"results": (base, [base[0], str(t / "r2.json"), *base[2:]]), "title": ["--title", "mine"]},
        "evaluate": {"split": ["--split", "forget05"], "oracle": ["--oracle", "testbed-llm-oracle-forget05"],
                     "judge": ["--judge", "nudenet"], "prompts": ["--prompts", str(t / "p.txt")],
                     "retain_prompts": ["--retain-prompts", str(t / "r.txt")], "limit": ["--limit", "3"],
                     "where": ["--where", "categories=sexual"], "samples": ["--samples", "2"],
                     "fidelity": ["--fidelity", "clip-score:clip=DIR"], "cache": ["--cache", str(t / "cache")],
                     "batch_size": ["--batch-size", "8"]},
        "bench": {"methods_": ["--methods", "ga" if lm else "uce"], "concepts": ["--concepts", "forget01" if lm else "star"],
                  "out": ["--out", str(t / "b")], "report": ["--report", str(t / "r.md")], "set_": ["--set", "uce.lamb=0.1"],
                  "attacks_": ["--attacks", "fast"], "robustness": ["--robustness", str(t / "rob.md")],
                  "judge": ["--judge", "nudenet"], "prompts": ["--prompts", str(t / "p.txt")],
                  "retain_prompts": ["--retain-prompts", str(t / "r.txt")], "limit": ["--limit", "3"],
                  "where": ["--where", "categories=sexual"], "samples": ["--samples", "2"], "resume": ["--resume"],
                  "backend": ["--backend", "ray"],
                  "address": (base + ["--backend", "ray"], base + ["--backend", "ray", "--address", "auto"])},
        "attack": {"attack_": ["--attack", "synonyms"], "out": ["-o", str(t / "a.json")], "budget": ["--budget", "3"],
                   "prompt": ["-p", "a star"], "reference": ["--reference", "testbed-oracle"],
                   "replay": ["--replay", str(t / "a.json")], "grid": ["--grid", str(t / "grid.png")],
                   "judge": ["--judge", "nudenet"], "prompt_file": ["--prompts", str(t / "p.txt")], "limit": ["--limit", "3"],
                   "where": ["--where", "categories=sexual"], "cache": ["--cache", str(t / "cache")],
                   "batch_size": ["--batch-size", "8"]},
        "testbed check": {"classifier": ["--classifier", str(t / "judge")], "seeds": ["--seeds", "9"]},
        "testbed train": {"workdir": ["--workdir", str(t / "w2")], "out": ["--out", str(t / "p")], "smoke": ["--smoke"],
                          "unet_steps": ["--unet-steps", "5"], "exclude": ["--exclude", "forget01" if lm else "star"],
                          "epochs": ["--epochs", "2"], "text_encoder": ["--text-encoder", "contrastive"],
                          "padding": ["--padding", "shuffled"], "codec": ["--codec", "testbed"],
                          "token_loss": (base + ["--text-encoder", "contrastive"],
                                         base + ["--text-encoder", "contrastive", "--token-loss", "1"]),
                          "retrain_codec": (base + ["--exclude", "star"], base + ["--exclude", "star", "--retrain-codec"])},
    }  # fmt: skip
    value = specific.get(command, {}).get(option, common.get(option))
    assert value is not None, f"no sample value for {command} {option}: add one to this test"
    return value if isinstance(value, tuple) else (base, base + value)


class Called(Exception):
    """Raised by a recorder once it has recorded the job's call."""


@pytest.fixture
def calls(monkeypatch):
    """Replace every job with a recorder: ``calls`` lists ``(job, args, kwargs)`` with callables dropped."""
    seen: list = []

    def recorder(name):
        def record(*args, **kwargs):
            seen.append((name, repr([a for a in args if not callable(a)]),
                         repr({k: v for k, v in kwargs.items() if not callable(v)})))  # fmt: skip
            raise Called

        return record

    def trainer(name):
        """A trainer class: the constructor's and ``run``'s arguments are recorded together."""

        class Recorder:
            def __init__(self, *args, **kwargs):
                self.args = args, {k: v for k, v in kwargs.items() if not callable(v)}

            def run(self, **kwargs):
                seen.append((name, repr(self.args), repr(kwargs)))
                raise Called

        return Recorder

    for targets in JOBS.values():
        for target in targets:
            module, attr = target.split(":")
            fake = trainer(target) if attr[0].isupper() else recorder(target)
            monkeypatch.setattr(importlib.import_module(module), attr, fake)
    return seen


def commands() -> dict[str, object]:
    """Every command of the CLI by its path (``testbed check``), from typer's own click tree."""
    out = {}

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            if getattr(sub, "commands", None):
                walk(sub, path)
            else:
                out[path] = sub

    walk(typer.main.get_command(app), "")
    return out


def test_every_option_of_every_command_is_declared():
    found = {path: {p.name for p in cmd.params} for path, cmd in commands().items()}
    assert set(found) == set(SCOPES), "a command is missing from (or stale in) erasekit.cli_options.SCOPES"
    for path, names in found.items():
        assert names == set(SCOPES[path]), f"'{path}': declare each option's kinds in SCOPES ({names ^ set(SCOPES[path])})"


def _run(args, calls) -> tuple:
    del calls[:]
    result = runner.invoke(app, args)
    return result, list(calls)


MATRIX = [(c, o, k) for c, scope in SCOPES.items() for o, kinds in scope.items() if (c, o) not in SELECTORS for k in KINDS]


@pytest.mark.parametrize("command,option,kind", MATRIX, ids=[f"{c}-{o}-{k}" for c, o, k in MATRIX])
def test_option_is_used_or_refused(command, option, kind, tmp_path, calls, monkeypatch):
    monkeypatch.chdir(tmp_path)
    applies_somewhere = any(kind in kinds for kinds in SCOPES[command].values())
    base = base_args(command, kind, tmp_path)
    if kind in SCOPES[command][option]:
        without, with_ = sample(command, option, kind, tmp_path, base)
        r0, c0 = _run(without, calls)
        r1, c1 = _run(with_, calls)
        assert c0 and isinstance(r0.exception, Called), (without, r0.output)
        assert c1 and isinstance(r1.exception, Called), (with_, r1.output)
        assert c0 != c1, f"{command} {option} on {kind} models is accepted but does not reach the job"
        return
    # refused: the option as the other kind's sample sets it, on this kind's invocation
    other = CAUSAL_LM if kind == DIFFUSION else DIFFUSION
    without, with_ = sample(command, option, other, tmp_path, base_args(command, other, tmp_path))
    shared = next((i for i, (a, b) in enumerate(zip(without, with_)) if a != b), min(len(without), len(with_)))
    args = base + with_[shared:] if applies_somewhere else base
    result, seen = _run(args, calls)
    assert not seen, f"{args} reached the job instead of being refused"
    assert result.exit_code == 2, (args, result.output)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    flag = max(next(p for p in commands()[command].params if p.name == option).opts, key=len)
    assert (flag in err) if applies_somewhere else (f"erasekit {command}" in err), err
