"""One self-contained HTML report (images and plots embedded) from erasekit's result JSON.

It reads results only (never a model): evaluation reports of the testbed, of any pipeline judged on a
prompt file, and of language models; attack reports (one attack, several, or the demo's red team);
bench results; gate reports; and PNG images given beside them. Each result is a section with what
it measured, the judge and its settings, and the numbers with their 95 % intervals; images a
result names (a judged evaluation's before/after grid, an attack's trial grid) are shown with it.
Three plots are drawn with matplotlib from every result given together:

- **UA against IRA** per method (the trade-off front: erased more, kept more is up and right);
- **ASR against budget** of every attack;
- **time to erase** per method.

The page needs no network and no script library; a small script counts the images that decoded
(``data-images-loaded`` on ``<body>``), which the tests read back from headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from erasekit.core.errors import ConfigError, MissingFileError
from erasekit.core.outputs import shown_path, stamp_of

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } .ci { color: #777; font-size: 0.85em; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""
SCRIPT = """
window.addEventListener("load", function () {
  var ok = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", ok.length + "/" + document.images.length);
});
"""


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _rate(cell) -> str:
    """``12.5 % [8.1, 18.0]`` of a rate dict (or a bare number)."""
    if cell is None:
        return "n/a"
    if isinstance(cell, (int, float)):
        return f"{100 * cell:.1f} %"
    if cell.get("rate") is None:
        return "n/a"
    lo, hi = cell.get("ci95", [None, None])
    ci = f' <span class="ci">[{100 * lo:.1f}, {100 * hi:.1f}]</span>' if lo is not None else ""
    return f"{100 * cell['rate']:.1f} %{ci}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(data: dict) -> str:
    return _table(["", ""], [[html.escape(str(k)), html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))]
                             for k, v in data.items()])  # fmt: skip


def kind_of_result(data) -> str:
    """What a result JSON is: ``evaluation``, ``judged``, ``lm-evaluation``, ``attack``, ``attacks``,
    ``red-team``, ``bench``, ``gate``, ``demo``; a one-line error for anything else."""
    if not isinstance(data, dict):
        return "unknown"
    checks = [("judged", data.get("kind") == "judged"), ("lm-evaluation", "forget" in data and "retain" in data),
              ("evaluation", "ua" in data and "targets" in data), ("attack", "attack" in data and "found" in data),
              ("attacks", isinstance(data.get("attacks"), list)), ("red-team", "red_team" in data),
              ("bench", isinstance(data.get("runs"), list)), ("gate", "passed" in data), ("demo", "erasures" in data and "prompts" in data)]  # fmt: skip
    return next((name for name, ok in checks if ok), "unknown")


def load_results(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, dict | bytes]]:
    """``(path, data)`` of every result named: JSON files, PNG images, and the erasekit JSON and PNG
    files inside directories (a demo or bench directory); a one-line error for a missing or foreign file."""
    out: list[tuple[Path, dict | bytes]] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".png") and stamp_of(f) is not None)
            if not files:
                raise ConfigError(f"{p} holds no erasekit results (JSON or PNG written by erasekit)")
            out += [(f, _read(f)) for f in files]
        elif p.is_file():
            out.append((p, _read(p)))
        else:
            raise MissingFileError(f"result {p} does not exist")
    if not out:
        raise ConfigError("nothing to report: name result files or directories (erasekit evaluate/attack/bench --out ...)")
    return out


def _read(path: Path) -> dict | bytes:
    if path.suffix.lower() == ".png":
        return path.read_bytes()
    if path.suffix.lower() != ".json":
        raise ConfigError(f"{path}: a report reads result JSON and PNG images, not {path.suffix or 'files without a suffix'}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if kind_of_result(data) == "unknown" and stamp_of(path) is None:
        raise ConfigError(f"{path} is not an erasekit result (evaluation, attack, bench or gate report)")
    return data


def _linked_image(path: Path, data: dict, key: str) -> str:
    """The image a result names under ``key`` (a path relative to the result), embedded, or ''."""
    name = data.get(key) if isinstance(data, dict) else None
    if not isinstance(name, str):
        return ""
    image = (path.parent / name) if not os.path.isabs(name) else Path(name)
    return f"<p>{_png(image.read_bytes(), name)}</p>" if image.is_file() else f"<p><em>{html.escape(name)} is missing</em></p>"


def _label(path: Path) -> str:
    """How a section names its file: relative to the current directory, else ``folder/file``."""
    shown = shown_path(path)
    return shown if not os.path.isabs(shown) else f"{path.parent.name}/{path.name}"


def _linked_path(path: Path, data) -> Path | None:
    """The image file a result names (``images``, or ``info.grid`` of an attack), resolved."""
    if not isinstance(data, dict):
        return None
    name = data.get("images") or (data.get("info") or {}).get("grid")
    if not isinstance(name, str):
        return None
    return ((path.parent / name) if not os.path.isabs(name) else Path(name)).resolve()


def _evaluation(path: Path, data: dict) -> str:
    rows = []
    for b, a in zip(data["base"].get("targets", []), data.get("targets", [])):
        for name, t in (("base", b), ("erased", a)) if data.get("cost") else (("base", b),):
            rows.append(
                [
                    html.escape(t["concept"]),
                    name,
                    *(_rate(t.get(k)) for k in ("ua", "ua_synonym", "ira", "ira_neighbours", "cra")),
                ]
            )
    parts = [_table(["target", "", "UA", "UA synonyms", "IRA", "IRA neighbours", "CRA"], rows)]
    if data.get("fidelity"):
        fid = data["fidelity"]
        parts.append(f"<p>fidelity on other prompts: pixel change {fid['pixel_change']:.4f}, labels unchanged "
                     f"{_rate(fid['labels_unchanged'])}</p>")  # fmt: skip
    if data.get("cost"):
        parts.append(
            "<h3>erasure</h3>"
            + _kv({k: data["cost"][k] for k in ("method", "params", "erase_seconds", "delta_bytes") if k in data["cost"]})
        )
    if data.get("judge"):
        parts.append("<h3>judge</h3>" + _kv(data["judge"]))
    return "".join(parts)


def _judged(path: Path, data: dict) -> str:
    rows = [["base", _rate(data["base"]["shown"]), _rate(data["base"]["ua_rate"])]]
    if "shown" in data:
        rows.append(["erased", _rate(data["shown"]), _rate(data["ua_rate"])])
    parts = [f"<p>concept <code>{html.escape(data['concept'])}</code>, {data['target_prompts']} prompts × {data['samples']} samples</p>",
             _table(["", "shown", "UA (erasure rate)"], rows), "<h3>judge</h3>" + _kv(data["judge"])]  # fmt: skip
    if data.get("prompt_set"):
        parts.append("<h3>prompts</h3>" + _kv(data["prompt_set"]))
    if data.get("retain"):
        parts.append("<h3>retain prompts</h3>" + _kv({k: v for k, v in data["retain"].items() if k != "fidelity_judge"}))
    parts.append(_linked_image(path, data, "images"))
    return "".join(parts)


def _lm_evaluation(path: Path, data: dict) -> str:
    rows = []
    for name, block, retain in (("base", data.get("base"), data.get("base")), ("oracle", data.get("oracle"), data.get("oracle")),
                                ("erased", data.get("forget"), data.get("retain"))):  # fmt: skip
        if block:
            rows.append(
                [name, _rate(block["forgotten"]), str(block.get("forget_quality")), str((retain or {}).get("model_utility"))]
            )
    return _table(["", "forgotten", "forget quality", "model utility"], rows)


def _attack(path: Path, data: dict) -> str:
    lo, hi = data.get("asr_ci", [None, None])
    head = _table(["attack", "concept", "ASR", "before", "recovered", "budget"],
                  [[html.escape(data["attack"]), html.escape(str(data.get("concept"))),
                    _rate({"rate": data["asr"], "ci95": [lo, hi]} if lo is not None else data["asr"]),
                    _rate(data.get("asr_before")), _rate(data.get("recovered")), f"{data.get('budget')} {data.get('budget_unit', '')}"]])  # fmt: skip
    found = [[html.escape(r["prompt"]), str(r.get("seed")), "yes" if r.get("success") else "no",
              html.escape(json.dumps(r.get("found"))[:160])] for r in data.get("found", [])[:24]]  # fmt: skip
    judge = data.get("judge")
    parts = [head, f"<p>judge: {html.escape(json.dumps(judge) if isinstance(judge, dict) else str(judge))}</p>",
             _table(["prompt", "seed", "concept back", "what was found"], found), _linked_image(path, data.get("info") or {}, "grid")]  # fmt: skip
    return "".join(parts)


def _red_team(path: Path, data: dict) -> str:
    rows = [[html.escape(r["method"]), html.escape(r["concept"]),
             ", ".join(f"{name} {_rate(a.get('asr'))}" for name, a in r["attacks"].items())] for r in data["red_team"]]  # fmt: skip
    return _table(["method", "concept", "ASR per attack"], rows)


def _bench(path: Path, data: dict) -> str:
    rows = [[html.escape(r.get("method", "")), html.escape(r.get("concept", "")), _rate(r.get("ua")), _rate(r.get("ira")), _rate(r.get("cra"))]
            for r in data["runs"]]  # fmt: skip
    return _table(["method", "concept", "UA", "IRA", "CRA"], rows)


def _gate(path: Path, data: dict) -> str:
    from erasekit.core.outputs import STAMP_KEY

    scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str)) and k != STAMP_KEY}
    return f"<p>gate {'PASSED' if data['passed'] else 'FAILED'}</p>" + _kv(scalars)


def _demo(path: Path, data: dict) -> str:
    return _kv({"prompts": data["prompts"], "erasures": data["erasures"], "seconds": data.get("seconds")})


SECTIONS = {"evaluation": _evaluation, "judged": _judged, "lm-evaluation": _lm_evaluation, "attack": _attack,
            "red-team": _red_team, "bench": _bench, "gate": _gate, "demo": _demo}  # fmt: skip


def _method_of(data: dict) -> str | None:
    cost = data.get("cost") or {}
    return data.get("method") or cost.get("method")


def _points(results) -> tuple[list, list, list]:
    """``(UA-IRA points, attack curves, erase times)`` from every result."""
    trade, curves, times = [], [], []
    for _, data in results:
        if not isinstance(data, dict):
            continue
        kind = kind_of_result(data)
        runs = data["runs"] if kind == "bench" else [data] if kind == "evaluation" else []
        for r in runs:
            method = _method_of(r)
            if method and r.get("ua") is not None and r.get("ira") is not None:
                trade.append((method, r["ua"], r["ira"]))
            seconds = (r.get("cost") or {}).get("erase_seconds")
            if method and seconds is not None:
                times.append((method, seconds))
        attacks = [data] if kind == "attack" else data.get("attacks", []) if kind == "attacks" else []
        curves += [(a["attack"], a["curve"], a.get("budget_unit", "")) for a in attacks if a.get("curve")]
    return trade, curves, times


def _plots(results) -> str:
    """The three plots (module docstring) of what the results hold; '' when they hold none of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trade, curves, times = _points(results)
    out = []
    if trade:
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        for method in sorted({m for m, _, _ in trade}):
            pts = [(ua, ira) for m, ua, ira in trade if m == method]
            ax.scatter([100 * u for u, _ in pts], [100 * i for _, i in pts], label=method)
        ax.set_xlabel("UA % (erased)")
        ax.set_ylabel("IRA % (kept)")
        ax.set_title("UA against IRA")
        ax.legend(fontsize=7)
        out.append(_png(_figure_png(fig), "UA against IRA per method"))
    if curves:
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        for name, curve, unit in curves:
            ax.plot([b for b, _ in curve], [100 * v for _, v in curve], marker=".", label=f"{name} ({unit})")
        ax.set_xlabel("budget")
        ax.set_ylabel("ASR %")
        ax.set_title("ASR against budget")
        ax.legend(fontsize=7)
        out.append(_png(_figure_png(fig), "ASR against budget"))
    if times:
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        names = sorted({m for m, _ in times})
        ax.bar(names, [max(s for m, s in times if m == n) for n in names])
        ax.set_ylabel("seconds")
        ax.set_title("time to erase")
        out.append(_png(_figure_png(fig), "time to erase per method"))
    return f"<h2>plots</h2><p>{' '.join(out)}</p>" if out else ""


def render_report(paths: Sequence[str | os.PathLike], title: str = "erasekit report") -> str:
    """The HTML page of the results at ``paths`` (module docstring)."""
    results = load_results(paths)
    linked = {_linked_path(path, data) for path, data in results} - {None}
    sections = []
    for path, data in results:
        name = html.escape(_label(path))
        if isinstance(data, bytes):
            if path.resolve() in linked:  # shown with the result that names it
                continue
            sections.append(f"<h2>{name}</h2><p>{_png(data, path.name)}</p>")
            continue
        if not isinstance(data, dict):
            continue
        kind = kind_of_result(data)
        if kind in ("attacks",):
            sections += [f"<h2>{name} · {html.escape(a['attack'])}</h2>" + _attack(path, a) for a in data["attacks"]]
        elif kind in SECTIONS:
            sections.append(f"<h2>{name} · {kind}</h2>" + SECTIONS[kind](path, data))
    body = "".join(sections) + _plots(results)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")  # fmt: skip


def write_html_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, title: str = "erasekit report") -> Path:
    """Render the results at ``paths`` and write the page to ``out`` (an .html file erasekit owns)."""
    from erasekit.core.outputs import check_file_output, write_html

    out = check_file_output(out, "report", (".html",), [str(p) for p in paths], what="HTML report")
    return write_html(out, render_report(paths, title), "report")
