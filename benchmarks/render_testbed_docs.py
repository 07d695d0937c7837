"""Fill the measured sections of docs/testbed.md from docs/testbed-gate.json and the training logs' JSON.

Usage: python benchmarks/render_testbed_docs.py [--gate docs/testbed-gate.json] [--training docs/testbed-training.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erasekit.testbeds.image.gate import summary_lines

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- measured:start -->", "<!-- measured:end -->"


def section(gate: dict, training: dict | None) -> str:
    s = gate["sampling"]
    lines = [
        START,
        "## Measured quality gate (`erasekit testbed check`)",
        "",
        f"From `docs/testbed-gate.json` ({gate['samples']['images']} images: {gate['samples']['prompts']} prompts x "
        f"{gate['samples']['seeds_per_prompt']} seeds, DDIM {s['steps']} steps, guidance {s['guidance_scale']}, {gate['seconds']:.0f} s):",
        "",
        "```",
        *summary_lines(gate),
        "```",
        "",
        "95 % Wilson intervals: " + ", ".join(f"{k} [{v[0]:.3f}, {v[1]:.3f}]" for k, v in gate["intervals"].items()) + ".",
        "",
    ]
    worst = sorted(gate["synonyms"], key=lambda x: -x["gap_points"])[:3]
    lines.append(
        "Largest synonym gaps: " + ", ".join(f"{w['word']} ({w['concept']}) {w['gap_points']:.1f} points" for w in worst) + "."
    )
    lines.append("")
    chars = [c for c in gate["characters"]]
    lines += ["| character | prompts | all attributes | shape | style | colour | background |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {c['name']} | {c['prompts']} | {c['all_attributes']:.2f} | {c['shape']:.2f} | {c['style']:.2f} | {c['colour']:.2f} | {c['background']:.2f} |"
        for c in chars
    ]
    lines.append("")
    if training:
        lines += [
            "## Measured training run",
            "",
            "From `docs/testbed-training.json` (the `*.done` records of the run that produced the shipped weights):",
            "",
        ]
        lines += ["| stage | seconds | result |", "|---|---|---|"]
        total = 0.0
        for stage, info in training["stages"].items():
            secs = info.get("seconds", 0.0)
            total += secs
            rest = {k: v for k, v in info.items() if k != "seconds"}
            lines.append(f"| {stage} | {secs:.0f} | `{json.dumps(rest)[:120]}` |")
        lines += [f"| **total** | **{total:.0f}** ({total / 60:.1f} min) | |", ""]
        if training.get("note"):
            lines += [training["note"], ""]
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gate", default=str(ROOT / "docs" / "testbed-gate.json"))
    ap.add_argument("--training", default=str(ROOT / "docs" / "testbed-training.json"))
    args = ap.parse_args()
    gate = json.loads(Path(args.gate).read_text())
    training = json.loads(Path(args.training).read_text()) if Path(args.training).is_file() else None
    doc = ROOT / "docs" / "testbed.md"
    text = doc.read_text()
    new = section(gate, training)
    if START in text:
        text = text[: text.index(START)] + new + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    doc.write_text(text)
    print(f"updated {doc}")


if __name__ == "__main__":
    main()
