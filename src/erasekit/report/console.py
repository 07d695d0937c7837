"""What the CLI prints after a job: short summaries read from the job's result (plain data), for
either kind of model. The result's own schema decides the form (a language-model evaluation has
``forget`` / ``retain`` blocks, an image evaluation ``ua`` / ``ira`` / ``cra``), so the commands that
print them never branch on the kind."""

from __future__ import annotations

import os


def _fmt(v, width: int = 5) -> str:
    return " " * (width - 3) + "n/a" if v is None else f"{v:{width}.3f}"


def erasure_lines(result, out: str | os.PathLike) -> list[str]:
    """One line on a saved erasure: what it removed, with which method, how big it is and where it is."""
    size = f"({result.num_bytes() / 2**20:.2f} MiB) in {result.timings['seconds']:.2f}s -> {out}"
    request = result.request
    lines = []
    training = result.info.get("training", {})
    if training.get("stopped_early"):
        lines.append(f"target reached: stopped early after step {training['evaluations'][-1]['step']}")
    if result.lora:
        rank = next(t.shape[0] for k, t in result.lora.items() if ".lora_A." in k)
        what = f"a rank-{rank} LoRA on {len(result.touched())} tensors"
    elif not result.weights and result.attachment is not None and hasattr(result.attachment, "guide"):
        what = "a guard (no weight changed; apply it with --guard DIR)"
    else:
        what = f"{len(result.weights)} tensors changed"
    if hasattr(request, "forget"):  # a forget request (language models)
        lines.append(f"unlearned {request.name} ({len(request.forget)} pairs) with {result.method}: {what} {size}")
    else:
        lines.append(f"erased {', '.join(request.concepts)} with {result.method}: {what} {size}")
    return lines


def evaluation_lines(report: dict, out: str | os.PathLike | None) -> list[str]:
    """The before/after table of an evaluation report (UA / IRA / CRA, or forgot / FQ / utility / leak)."""
    lines = []
    if report.get("kind") == "judged":  # any pipeline, by a registered judge on a prompt file
        lines += judged_lines(report)
    elif "forget" in report:  # a language-model evaluation
        f, r = report["forget"], report["retain"]
        lines.append(f"{'':<8}{'forgot':>8}{'FQ':>8}{'utility':>8}{'leak %':>8}")
        for name, b in (("base", report["base"]), ("oracle", report["oracle"])):
            if b is not None:
                lines.append(f"{name:<8}{_fmt(b['forgotten']['rate'], 6):>8}{_fmt(b.get('forget_quality'), 6):>8}"
                             f"{_fmt(b['model_utility'], 6):>8}{_fmt(b.get('privacy_leak'), 6):>8}")  # fmt: skip
        if report.get("erasure") is not None:
            lines.append(f"{'erased':<8}{_fmt(f['forgotten']['rate'], 6):>8}{_fmt(f.get('forget_quality'), 6):>8}"
                         f"{_fmt(r['model_utility'], 6):>8}{_fmt(f.get('privacy_leak'), 6):>8}")  # fmt: skip
    else:
        base = report["base"]
        lines.append(f"{'':<10}{'UA':>7}{'IRA':>7}{'CRA':>7}")
        lines.append(f"{'base':<10}{_fmt(base['ua']):>7}{_fmt(base['ira']):>7}{_fmt(base['cra']):>7}")
        if report.get("erasure") is not None:
            lines.append(f"{'erased':<10}{_fmt(report['ua']):>7}{_fmt(report['ira']):>7}{_fmt(report['cra']):>7}")
            fid = report["fidelity"]
            lines.append(
                f"fidelity: pixel change {fid['pixel_change']:.4f}, labels unchanged {fid['labels_unchanged']['rate']:.3f}"
            )
    if out is not None:
        lines.append(f"wrote {out}")
    return lines


def judge_line(judge: dict) -> str:
    """``judge NAME (package version; classes; threshold)`` from a judge's description."""
    parts = [f"{judge.get('package')} {judge.get('version')}" if judge.get("package") else None,
             f"{len(judge['classes'])} classes" if judge.get("classes") else None,
             f"threshold {judge['threshold']}" if judge.get("threshold") is not None else None]  # fmt: skip
    return f"judge {judge.get('name')} ({'; '.join(p for p in parts if p)})"


def judged_lines(report: dict) -> list[str]:
    """The shown / UA table of a judged evaluation, and its retention line."""
    lines = [
        judge_line(report["judge"]),
        f"{'':<10}{'shown':>7}{'UA':>7}  ({report['base']['shown']['n']} images of {report['concept']})",
    ]
    lines.append(f"{'base':<10}{_fmt(report['base']['shown']['rate']):>7}{_fmt(report['base']['ua']):>7}")
    if "shown" in report:
        lines.append(f"{'erased':<10}{_fmt(report['shown']['rate']):>7}{_fmt(report['ua']):>7}")
    kept = report.get("retain")
    if kept:
        text = f"retain: verdict kept {_fmt(kept['verdict_kept']['rate']).strip()}, pixel change {kept['pixel_change']:.4f}"
        if "clip_score" in kept:
            text += f", CLIP score {kept['clip_score']['base']:.2f} -> {kept['clip_score']['erased']:.2f}"
            text += "" if kept.get("fd_clip") is None else f", FD {kept['fd_clip']:.4g}"
            text += "" if kept.get("kid_clip") is None else f", KID {kept['kid_clip']:.4g}"
        lines.append(text)
    return lines


def bench_lines(runs: list[dict]) -> list[str]:
    """One line per bench run: its erasure and retention (image) or the share of facts forgotten (language)."""
    lines = []
    for r in runs:
        if r.get("kind") == "judged":  # a judged run on any pipeline
            lines.append(f"{r['concept']:<10} {r['method']:<6} shown {_fmt(r['base']['shown']['rate'])} -> {_fmt(r['shown']['rate'])}"
                         f"  UA {_fmt(r['ua'])}")  # fmt: skip
            continue
        if "split" in r:  # a language-model run
            e = r["eval"]
            forgotten = (e["oracle"] if r["label"] == "oracle" else e["forget"])["forgotten"]["rate"]
            lines.append(f"{r['split']:<9} {r['label']:<14} forgotten {forgotten:.2f}")
            continue
        worst = max((a["asr"] for a in r.get("attacks", {}).values()), default=None)
        lines.append(
            f"{r['concept']:<10} {r['method']:<6} UA {r['ua']:.2f} (base {r['base']['ua']:.2f})  IRA {r['ira']:.2f}  CRA {r['cra']:.2f}"
            + ("" if worst is None else f"  worst ASR {worst:.2f}")
        )
    return lines


def gate_lines(report: dict, out: str | os.PathLike) -> list[str]:
    """The quality gate's summary (the image gate's per-head table, or the fact world's accuracies)."""
    if "accuracy_train" in report:  # the fact world's gate
        lines = [f"{key:<22}{report[key]:.3f}" for key in ("accuracy_train", "accuracy_paraphrase", "filler_perplexity",
                                                            "accuracy_excluded") if key in report]  # fmt: skip
        return lines + [f"gate {'PASSED' if report['passed'] else 'FAILED'}; wrote {out}"]
    from erasekit.testbeds.image.gate import summary_lines

    return [*summary_lines(report), f"wrote {out}"]
