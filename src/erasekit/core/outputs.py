"""Where erasekit may write, and what it promises about the files already there.

Every command checks its output paths *before* any expensive work, and every writer checks again
when it writes. The rules:

* ``""``, ``.``, ``/``, the current directory and its parents, the home directory and its parents,
  erasekit's own package directory, and the input model's (or erasure's) directory are never outputs.
* An existing **file** is replaced only when erasekit wrote it as an output of the same kind: JSON
  reports carry ``"erasekit_output": KIND``, images an EXIF ``Software`` tag ``erasekit KIND``,
  Markdown tables a first line ``<!-- erasekit_output: KIND -->``.
* An existing **directory** is used only when it is empty or erasekit wrote it as an output of the
  same kind: its manifest ``.erasekit-output.json`` names the kind and, for directories that are
  replaced as a whole (erasures, pipelines), every file erasekit wrote there. A directory holding
  any file erasekit did not write is never replaced, so nothing foreign is ever deleted.
* *Collections* (the demo's folder, bench results, training checkpoints, a testbed training run)
  are written file by file; erasekit never deletes anything in them it did not write.

Writes themselves are atomic (:func:`~erasekit.core.io.atomic_path`). Under torchrun / accelerate
(:mod:`erasekit.core.parallel`) rank 0 alone writes; the other ranks check every path alike and
return it unwritten, except inside :func:`~erasekit.core.parallel.solo`, where a rank writes its
own unit's files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from erasekit.core import parallel
from erasekit.core.errors import OutputPathError
from erasekit.core.io import atomic_path, write_json

MANIFEST = ".erasekit-output.json"
STAMP_KEY = "erasekit_output"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXIF_SOFTWARE = 0x0131

#: Directory kinds replaced as a whole (every file in them must be erasekit's).
REPLACED_KINDS = ("erasure", "pipeline")
#: Directory kinds written file by file (foreign files may sit beside erasekit's; they are left alone).
COLLECTION_KINDS = ("demo", "bench", "checkpoints", "testbed-train", "image-cache")

#: Files an erasure directory holds (erasure directories written before manifests existed are known by these).
ERASURE_FILES = ("erasure.json", "weights.safetensors", "pytorch_lora_weights.safetensors", "attachment.safetensors")


def _package_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def refuse_protected(path: str | os.PathLike, protect: Iterable[str | os.PathLike] = (), what: str = "output") -> Path:
    """The absolute form of ``path``, or an :class:`OutputPathError` when it names a place erasekit
    must never write: empty, the current directory or a parent of it, ``/``, the home directory or a
    parent of it, erasekit's package, or (``protect``) the input model / erasure, inside or around it."""
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputPathError(f"the {what} path is empty (an unset shell variable?); name a new file or directory")
    p = Path(text).expanduser()
    resolved = p.resolve()
    cwd = Path.cwd().resolve()
    if _within(cwd, resolved):
        raise OutputPathError(
            f"refusing to write the {what} to {text!r}: it is the current directory or one of its parents; name a new directory"
        )
    home = Path.home().resolve()
    if _within(home, resolved):
        raise OutputPathError(
            f"refusing to write the {what} to {text!r}: it is the home directory or one of its parents; name a new directory"
        )
    if _within(resolved, _package_dir()):
        raise OutputPathError(
            f"refusing to write the {what} to {text!r}: it lies inside erasekit's own package ({_package_dir()})"
        )
    for other in protect:
        if other is None or not str(other).strip():
            continue
        root = Path(other).expanduser().resolve()
        if _within(resolved, root) or _within(root, resolved):
            raise OutputPathError(
                f"refusing to write the {what} to {text!r}: it is, holds or lies inside the input {other} (inputs are never modified)"
            )
    return p.absolute()


def _check_parent(p: Path, path: str | os.PathLike) -> None:
    """The nearest existing ancestor of ``p`` must be a directory (``out.txt/sub`` cannot be written)."""
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"cannot write {os.fspath(path)!r}: {parent} is a file, not a directory")
            return


def shown_path(path: str | os.PathLike) -> str:
    """How generated docs and results name ``path``: relative to the current directory (the repository,
    where benchmarks run) when it lies inside it, else as given; never this machine's absolute path
    for a place inside the working tree."""
    p = Path(path)
    try:
        return Path(os.path.abspath(p)).relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return os.fspath(path)


def _refuse_nested(p: Path, path: str | os.PathLike, what: str) -> None:
    """An output never goes inside an erasekit output that is replaced as a whole (an erasure, a
    pipeline): replacing that one later would have to delete a file it does not list."""
    for parent in p.parents:
        if (parent / MANIFEST).is_file() or (parent / "erasure.json").is_file():
            found = read_manifest(parent)
            kind = found["kind"] if found else _legacy_kind(parent)[0]
            if kind in REPLACED_KINDS:
                raise OutputPathError(
                    f"refusing to write the {what} to {os.fspath(path)!r}: it lies inside the erasekit {kind} output {parent}; "
                    "name a path outside it"
                )


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


# -- stamps on files --------------------------------------------------------------------------------
def stamp_of(path: Path) -> str | None:
    """The output kind erasekit stamped into ``path``, or ``None`` when erasekit did not write it."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            stamp = (_json_object(path) or {}).get(STAMP_KEY)
            return stamp if isinstance(stamp, str) else None
        if suffix in (".md", ".html"):
            with path.open(encoding="utf-8") as f:
                first = f.readline().strip()
            prefix = f"<!-- {STAMP_KEY}: "
            return first[len(prefix) : -len(" -->")] if first.startswith(prefix) and first.endswith(" -->") else None
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                software = im.getexif().get(EXIF_SOFTWARE)
            return software.split(" ", 1)[1] if isinstance(software, str) and software.startswith("erasekit ") else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def markdown_stamp(kind: str) -> str:
    """The first line of a Markdown file erasekit writes."""
    return f"<!-- {STAMP_KEY}: {kind} -->\n"


def image_exif(kind: str):
    """EXIF data marking an image as an erasekit output of ``kind``."""
    from PIL import Image

    exif = Image.Exif()
    exif[EXIF_SOFTWARE] = f"erasekit {kind}"
    return exif


def check_file_output(
    path: str | os.PathLike,
    kind: str,
    suffixes: tuple[str, ...],
    protect: Iterable[str | os.PathLike] = (),
    what: str | None = None,
) -> Path:
    """Check that erasekit may write the file ``path`` as an output of ``kind``; return its absolute path.

    The suffix must be one of ``suffixes``; an existing file must be an erasekit output of the same
    kind; the path must not be a directory, and its parent, if it exists, must be a directory.
    """
    what = what or f"{kind} file"
    p = refuse_protected(path, protect, what)
    if p.suffix.lower() not in suffixes:
        raise OutputPathError(f"{what} {os.fspath(path)!r} must end in {', '.join(suffixes)} (got {p.suffix or 'no suffix'!r})")
    if p.is_dir():
        raise OutputPathError(f"{os.fspath(path)!r} is a directory; name a file for the {what}, e.g. {p / ('out' + suffixes[0])}")
    _check_parent(p, path)
    _refuse_nested(p, path, what)
    if p.exists() or p.is_symlink():
        found = stamp_of(p) if p.is_file() and not p.is_symlink() else None
        if found != kind:
            whose = f"an erasekit {found} output, not a {kind}" if found else "a file erasekit did not write"
            raise OutputPathError(
                f"{os.fspath(path)!r} already exists and is {whose}; choose another name or move it away (erasekit never overwrites it)"
            )
    return p


# -- manifests of directories -----------------------------------------------------------------------
def read_manifest(directory: Path) -> dict | None:
    """The manifest of an erasekit output directory, or ``None``."""
    data = _json_object(directory / MANIFEST)
    return data if data is not None and isinstance(data.get("kind"), str) else None


def _legacy_kind(directory: Path) -> tuple[str | None, set[str]]:
    """Directories erasekit wrote before manifests existed: erasures (known by their format) and
    testbed training directories (``config.json`` beside stage markers ``*.done``)."""
    if (directory / "config.json").is_file() and any(directory.glob("*.done")):
        return "testbed-train", set()
    meta = _json_object(directory / "erasure.json")
    if (
        meta is not None
        and str(meta.get("format", "")).startswith("erasekit-erasure-")
        and not (directory / "model_index.json").exists()
    ):
        return "erasure", set(ERASURE_FILES)
    return None, set()


def _files(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if not p.is_dir() or p.is_symlink()} - {MANIFEST}


def check_dir_output(
    path: str | os.PathLike, kind: str, protect: Iterable[str | os.PathLike] = (), what: str | None = None
) -> Path:
    """Check that erasekit may write the directory ``path`` as an output of ``kind``; return its absolute path.

    A new or empty directory is fine. An existing one must carry erasekit's manifest of the same kind
    and, for kinds replaced as a whole, hold no file erasekit did not write.
    """
    what = what or f"{kind} directory"
    p = refuse_protected(path, protect, what)
    if p.is_symlink():
        raise OutputPathError(f"{os.fspath(path)!r} is a symbolic link; name a real directory for the {what}")
    _check_parent(p, path)
    _refuse_nested(p, path, what)
    if not p.exists():
        return p
    if not p.is_dir():
        raise OutputPathError(f"{os.fspath(path)!r} is an existing file, not a directory; name a new directory for the {what}")
    if not any(p.iterdir()):
        return p
    manifest = read_manifest(p)
    found, known = (manifest["kind"], set(manifest.get("files", []))) if manifest else _legacy_kind(p)
    if found is None:
        raise OutputPathError(
            f"{os.fspath(path)!r} is an existing directory that erasekit did not write; name a new or empty directory "
            "(erasekit never replaces or deletes files it did not write)"
        )
    if found != kind:
        raise OutputPathError(f"{os.fspath(path)!r} is an erasekit {found} output, not a {what}; name another directory")
    if kind in REPLACED_KINDS:
        foreign = sorted(_files(p) - known)
        nested = sorted({str(Path(f).parent) for f in foreign if Path(f).name == MANIFEST})
        if nested:
            raise OutputPathError(
                f"{os.fspath(path)!r} holds another erasekit output ({nested[0]}); move it out or name another directory "
                "(replacing it would delete that output)"
            )
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputPathError(
                f"{os.fspath(path)!r} holds files erasekit did not write ({shown}); move them away or name another directory "
                "(replacing it would delete them)"
            )
    return p


def write_manifest(directory: Path, kind: str, files: bool) -> None:
    """Mark ``directory`` as erasekit's output of ``kind`` (with ``files``: listing every file in it), atomically."""
    from erasekit import __version__

    data: dict = {"kind": kind, "erasekit_version": __version__}
    if files:
        data["files"] = sorted(_files(directory))
    write_json(directory / MANIFEST, data)


def claim_collection(
    path: str | os.PathLike, kind: str, protect: Iterable[str | os.PathLike] = (), what: str | None = None
) -> Path:
    """Check ``path`` as a collection directory of ``kind``, create it if needed and mark it as erasekit's."""
    if kind not in COLLECTION_KINDS:
        raise ValueError(f"{kind!r} is not a collection kind")
    p = check_dir_output(path, kind, protect, what)
    shards = parallel.current()
    if shards.main:  # under torchrun / accelerate rank 0 makes it, the others wait for it
        p.mkdir(parents=True, exist_ok=True)
        if read_manifest(p) is None:
            write_manifest(p, kind, files=False)
    shards.barrier()
    return p


# -- writers of stamped outputs ---------------------------------------------------------------------
def write_report(path: str | os.PathLike, data: dict, kind: str, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a JSON report stamped as erasekit's ``kind`` output (atomically; checked like any output)."""
    p = check_file_output(path, kind, (".json",), protect, what=f"{kind} report")
    if not parallel.writes():  # another rank (rank 0) writes it: erasekit.core.parallel
        return p
    write_json(p, {STAMP_KEY: kind, **{k: v for k, v in data.items() if k != STAMP_KEY}})
    return p


_SECTION = re.compile(r"<!-- section: ([\w-]+) -->\n.*?<!-- /section: \1 -->\n", re.S)


def _sections(text: str) -> dict[str, str]:
    """The named sections (``<!-- section: NAME -->`` ... ``<!-- /section: NAME -->``) of a Markdown text."""
    return {m.group(1): m.group(0) for m in _SECTION.finditer(text)}


def write_markdown(path: str | os.PathLike, text: str, kind: str) -> Path:
    """Write a Markdown file whose first line stamps it as erasekit's ``kind`` output (atomically).
    Named sections that another writer keeps in the existing file (:func:`write_section`) and
    ``text`` does not hold are carried over at its end."""
    p = check_file_output(path, kind, (".md",), what=f"{kind} table")
    if not parallel.writes():
        return p
    old = _sections(p.read_text(encoding="utf-8")) if p.is_file() else {}
    kept = "".join(block for name, block in old.items() if name not in _sections(text))
    with atomic_path(p) as tmp:
        tmp.write_text(markdown_stamp(kind) + text + ("\n" + kept if kept else ""), encoding="utf-8")
    return p


def write_html(path: str | os.PathLike, text: str, kind: str) -> Path:
    """Write an HTML page whose first line stamps it as erasekit's ``kind`` output (atomically)."""
    p = check_file_output(path, kind, (".html",), what=f"{kind} page")
    if not parallel.writes():
        return p
    with atomic_path(p) as tmp:
        tmp.write_text(markdown_stamp(kind) + text, encoding="utf-8")
    return p


def write_section(path: str | os.PathLike, name: str, text: str, kind: str) -> Path:
    """Put ``text`` as the section ``name`` of the Markdown output ``path`` (replacing that section,
    else appending it; a new file holds only the section), leaving the rest of the file as it is."""
    p = check_file_output(path, kind, (".md",), what=f"{kind} table")
    if not parallel.writes():
        return p
    block = f"<!-- section: {name} -->\n{text.rstrip()}\n<!-- /section: {name} -->\n"
    body = p.read_text(encoding="utf-8") if p.is_file() else markdown_stamp(kind)
    if name in _sections(body):
        body = body.replace(_sections(body)[name], block)
    else:
        body = body.rstrip("\n") + "\n\n" + block
    with atomic_path(p) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return p


def write_image(image, path: str | os.PathLike, kind: str = "image") -> Path:
    """Save a PIL image (format from the suffix: PNG, JPEG or WebP) stamped as erasekit's ``kind`` output."""
    p = check_file_output(path, kind, IMAGE_SUFFIXES, what="image")
    if not parallel.writes():
        return p
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[p.suffix.lower()]
    with atomic_path(p) as tmp:
        image.save(tmp, format=fmt, exif=image_exif(kind))
    return p


# -- one run per output ------------------------------------------------------------------------------
def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.erasekit-lock"


@contextmanager
def hold_outputs(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Hold an exclusive lock on each output path (``None`` skipped) for the length of a run, so that a
    second run started with the same output refuses at once instead of losing one result silently.

    The lock is ``flock`` on a hidden file beside the output (``.NAME.erasekit-lock``), released (and
    the file removed) when the run ends, and released by the system if the process dies. Where
    ``fcntl`` is missing (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    held: list[tuple[Path, int]] = []
    try:
        for path in paths:
            if path is None:
                continue
            lock = _lock_file(Path(path).absolute())
            lock.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise OutputPathError(
                        f"another erasekit run is writing {os.fspath(path)!r} right now; wait for it to finish or name another output"
                    ) from None
                try:  # the holder before us may have removed the file between our open and our lock: lock the new one
                    same = os.fstat(fd).st_ino == os.stat(lock).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    held.append((lock, fd))
                    break
                os.close(fd)
        yield
    finally:
        for lock, fd in reversed(held):
            lock.unlink(missing_ok=True)
            os.close(fd)
