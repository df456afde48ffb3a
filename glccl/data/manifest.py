"""The canonical manifest: one row per caption, built from a benchmark's own annotation files.

Schema (:data:`MANIFEST_SCHEMA`): ``dataset, split, video_id, video_path, caption_id, caption`` (all strings).
Rows are grouped by video (all captions of a video are contiguous) in the order of the benchmark's split list, so the
*video index* of a row is the rank of its video's first appearance and the *caption index* is the row number within the
split.

Adapters (``build_manifest(dataset, root, split)``), each reading the original files under ``root``:

=========  ==========================================================================================================
synth      ``captions.json`` (video id -> captions) + ``{split}_list.txt``: the MSVD format, written by ``glccl data
           synth``
msrvtt     ``train``/``train9k``: ``MSRVTT_train.9k.csv`` + captions of ``MSRVTT_data.json`` (``sentences``);
           ``train7k``: ``MSRVTT_train.7k.csv``; ``test``/``val``: ``MSRVTT_JSFUSION_test.csv`` (1k-A, one caption per
           video; MSR-VTT has no separate validation split, as in the reference code)
msvd       ``captions_msvd.json`` (or ``captions.json``) + ``{split}_list.txt``; every caption is a row
didemo     ``{split}_data.json`` (LocalizingMoments); all descriptions of a video joined into one paragraph (one row per
           video), restricted to ``{split}_list.txt`` when present
vatex      HGR: ``ref_captions.json`` + ``{split}_list.txt``; otherwise the official JSON list of ``{videoID, enCap}``
           (``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``, ``vatex_public_test_english_v1.1.json`` or any
           ``*.json`` whose name contains the split)
=========  ==========================================================================================================

Bad rows (no video, empty caption, caption not valid UTF-8, ...) are skipped and recorded in a :class:`SkipReport`; a
malformed annotation file raises :class:`AnnotationError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from glccl.data.report import AnnotationError, MissingAnnotationError, SkipReport, SplitError

MANIFEST_SCHEMA = pa.schema([
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("video_id", pa.string()),
    ("video_path", pa.string()),
    ("caption_id", pa.string()),
    ("caption", pa.string()),
])
DATASETS = ("synth", "msrvtt", "msvd", "didemo", "vatex")


class UnknownSplitError(ValueError):
    """A split name the benchmark's protocol does not define."""


VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".m4v", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".3g2", ".mts")


# ---------------------------------------------------------------------------------------------------------------------
# reading annotation files (lenient about encoding so that a bad caption is one bad row, not a bad file)


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise AnnotationError(path, "is a directory, not an annotation file")
    if not path.is_file():
        raise MissingAnnotationError(path, "annotation file not found")
    # surrogateescape keeps undecodable bytes as lone surrogates: the caption that holds them is rejected later
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark (Windows editors write one)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:  # json keeps the last one silently: the first one's captions would be lost
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _load_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno) from e
    except _DuplicateKey as e:
        key = str(e.args[0])
        line = next((n for n, ln in enumerate(text.splitlines(), 1) if json.dumps(key) in ln), None)
        raise AnnotationError(path, f"key {key!r} is given twice in one object (JSON keeps only the last)",
                              line=line) from None


def _read_list(path: Path) -> list[str]:
    """One id per line; blank lines ignored."""
    out = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        item = line.strip()
        if not item:
            continue
        if not _is_utf8(item):
            raise AnnotationError(path, "line is not valid UTF-8", line=lineno)
        if any(ch.isspace() for ch in item) or "," in item:
            raise AnnotationError(path, f"expected one video id per line, got {item[:60]!r}", line=lineno)
        out.append(item)
    return out


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows as dicts with their line numbers; a wrong header or field count is a malformed file."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise AnnotationError(path, "empty CSV file", line=1) from None
    except csv.Error as e:
        raise AnnotationError(path, f"malformed CSV: {e}", line=1) from e
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise AnnotationError(path, f"CSV header lacks column(s) {missing} (header: {header})", line=1)
    rows = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise AnnotationError(path, f"malformed CSV: {e}", line=reader.line_num) from e
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise AnnotationError(path, f"expected {len(header)} fields, got {len(fields)}", line=reader.line_num)
        rows.append((reader.line_num, dict(zip(header, fields))))
    return rows


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _expect(cond: bool, path: Path, msg: str, line: int = 1) -> None:
    if not cond:
        raise AnnotationError(path, msg, line=line)


# ---------------------------------------------------------------------------------------------------------------------
# adapters: each yields (video_id, video file name hint or None, [(caption_id, raw caption), ...]) in split order


Record = tuple[str, "str | None", list[tuple[str, object]]]


def _captions_dict(path: Path, ids: list[str], report: SkipReport) -> list[Record]:
    data = _load_json(path)
    _expect(isinstance(data, dict), path, f"expected a JSON object mapping video ids to caption lists, got "
                                          f"{type(data).__name__}")
    out = []
    for vid in ids:
        caps = data.get(vid)
        if caps is None:
            report.skip(vid, "no_caption", f"{vid} is in the split list but has no captions in {path.name}")
            continue
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list):
            report.skip(vid, "bad_row", f"captions of {vid} in {path.name} are a {type(caps).__name__}, not a list")
            continue
        out.append((vid, None, [(f"{vid}#{k}", c) for k, c in enumerate(caps)]))
    return out


def _msvd(root: Path, split: str, report: SkipReport, captions_names=("captions_msvd.json", "captions.json")) -> list[Record]:
    cap_path = next((root / n for n in captions_names if (root / n).is_file()), root / captions_names[0])
    ids = _read_list(root / f"{split}_list.txt")
    return _captions_dict(cap_path, ids, report)


def _synth(root: Path, split: str, report: SkipReport) -> list[Record]:
    return _msvd(root, split, report, captions_names=("captions.json", "captions_msvd.json"))


_MSRVTT_SPLITS = {
    "train": "MSRVTT_train.9k.csv", "train9k": "MSRVTT_train.9k.csv", "train7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv", "val": "MSRVTT_JSFUSION_test.csv", "test1k": "MSRVTT_JSFUSION_test.csv",
}


def _msrvtt(root: Path, split: str, report: SkipReport) -> list[Record]:
    if split not in _MSRVTT_SPLITS:
        raise UnknownSplitError(f"msrvtt: unknown split {split!r} (known: {', '.join(_MSRVTT_SPLITS)})")
    name = _MSRVTT_SPLITS[split]
    path = root / name
    if "JSFUSION" in name:
        out: list[Record] = []
        index: dict[str, int] = {}
        for lineno, row in _read_csv(path, ("video_id", "sentence")):
            vid = row["video_id"].strip()
            key = row.get("key", "").strip() or f"line{lineno}"
            if not vid:
                report.skip(f"{path.name}:{lineno}", "no_video", f"row {key} names no video", str(path))
                continue
            if vid not in index:
                index[vid] = len(out)
                out.append((vid, None, []))
            out[index[vid]][2].append((key, row["sentence"]))
        return out
    ids = [row["video_id"].strip() for _, row in _read_csv(path, ("video_id",)) if row["video_id"].strip()]
    data_path = root / "MSRVTT_data.json"
    data = _load_json(data_path)
    _expect(isinstance(data, dict) and isinstance(data.get("sentences"), list), data_path,
            "expected a JSON object with a 'sentences' list")
    wanted = set(ids)
    by_video: dict[str, list[tuple[str, object]]] = {}
    for k, s in enumerate(data["sentences"]):
        if not isinstance(s, dict):
            report.skip(f"sentences[{k}]", "bad_row", f"entry is a {type(s).__name__}", str(data_path))
            continue
        vid = s.get("video_id")
        if not isinstance(vid, str) or not vid.strip():
            report.skip(f"sentences[{k}]", "no_video", f"sentence {s.get('sen_id', k)} names no video",
                        str(data_path))
            continue
        vid = vid.strip()
        if vid in wanted:
            cid = s.get("sen_id")
            by_video.setdefault(vid, []).append((str(cid) if cid is not None else f"{vid}#{len(by_video.get(vid, []))}",
                                                 s.get("caption")))
    out = []
    for vid in ids:
        if vid not in by_video:
            report.skip(vid, "no_caption", f"{vid} is in {name} but has no sentence in MSRVTT_data.json")
            continue
        out.append((vid, None, by_video[vid]))
    return out


def _didemo(root: Path, split: str, report: SkipReport) -> list[Record]:
    path = root / f"{split}_data.json"
    data = _load_json(path)
    _expect(isinstance(data, list), path, f"expected a JSON list of moments, got {type(data).__name__}")
    order: list[str] = []
    hint: dict[str, str] = {}
    parts: dict[str, list[tuple[str, object]]] = {}
    for k, m in enumerate(data):
        if not isinstance(m, dict):
            report.skip(f"{path.name}[{k}]", "bad_row", f"entry is a {type(m).__name__}", str(path))
            continue
        name = m.get("video")
        if not isinstance(name, str) or not name.strip():
            report.skip(f"{path.name}[{k}]", "no_video", f"moment {m.get('annotation_id', k)} names no video", str(path))
            continue
        vid = name.strip()  # the file name is the id: "x.mov" and "x.mp4" are different videos in DiDeMo
        if vid not in parts:
            order.append(vid)
            parts[vid] = []
            hint[vid] = vid
        parts[vid].append((f"{vid}#{m.get('annotation_id', k)}", m.get("description")))
    list_path = root / f"{split}_list.txt"
    if list_path.is_file():
        listed = _read_list(list_path)
        for vid in listed:
            if vid not in parts:
                report.skip(vid, "no_caption", f"{vid} is in {list_path.name} but has no description")
        order = [v for v in listed if v in parts]
    out: list[Record] = []
    for vid in order:
        # a paragraph: every usable description of the video, in file order, joined by spaces
        good = []
        for cid, raw in parts[vid]:
            text, reason = clean_caption(raw)
            if reason:
                report.skip(cid, reason[0], reason[1], str(path))
            else:
                good.append(text)
        if not good:
            report.skip(vid, "no_caption", "no usable description")
            continue
        report.add_ok(len(good) - 1)  # the paragraph row counts the last one
        out.append((vid, hint[vid], [(f"{vid}#paragraph", " ".join(good))]))
    return out


_VATEX_OFFICIAL = {
    "train": ("vatex_training_v1.0.json",),
    "val": ("vatex_validation_v1.0.json",),
    "test": ("vatex_public_test_english_v1.1.json", "vatex_public_test_english_v1.0.json"),
}
_SPLIT_WORDS = {"train": ("train",), "val": ("val",), "test": ("test",)}


def _vatex(root: Path, split: str, report: SkipReport) -> list[Record]:
    ref = root / "ref_captions.json"
    list_path = root / f"{split}_list.txt"
    if ref.is_file() and list_path.is_file():  # HGR format
        return _captions_dict(ref, _read_list(list_path), report)
    path = next((root / n for n in _VATEX_OFFICIAL.get(split, ()) if (root / n).is_file()), None)
    if path is None:
        words = _SPLIT_WORDS.get(split, (split,))
        cands = sorted(p for p in root.glob("*.json")
                       if p.name != "ref_captions.json" and any(w in p.name.lower() for w in words))
        if not cands:
            raise MissingAnnotationError(root, f"vatex: no annotation for split {split!r} (need ref_captions.json + "
                                        f"{split}_list.txt, or an official vatex_*.json)")
        path = cands[0]
    data = _load_json(path)
    _expect(isinstance(data, list), path, f"expected a JSON list of {{videoID, enCap}} entries, got "
                                          f"{type(data).__name__}")
    out: list[Record] = []
    for k, e in enumerate(data):
        if not isinstance(e, dict):
            report.skip(f"{path.name}[{k}]", "bad_row", f"entry is a {type(e).__name__}", str(path))
            continue
        vid = e.get("videoID")
        if not isinstance(vid, str) or not vid.strip():
            report.skip(f"{path.name}[{k}]", "no_video", "entry names no video (videoID)", str(path))
            continue
        vid = vid.strip()
        caps = e.get("enCap")
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not caps:
            report.skip(vid, "no_caption", "entry has no English captions (enCap)", str(path))
            continue
        out.append((vid, None, [(f"{vid}#{j}", c) for j, c in enumerate(caps)]))
    return out


_ADAPTERS = {"synth": _synth, "msrvtt": _msrvtt, "msvd": _msvd, "didemo": _didemo, "vatex": _vatex}


# ---------------------------------------------------------------------------------------------------------------------
# public API


def clean_caption(raw: object) -> tuple[str, tuple[str, str] | None]:
    """``(caption, None)`` for a usable caption (whitespace normalised), else ``("", (reason, detail))``."""
    if raw is None:
        return "", ("empty_caption", "caption is missing")
    if not isinstance(raw, str):
        return "", ("bad_row", f"caption is a {type(raw).__name__}, not a string")
    if not _is_utf8(raw):
        return "", ("bad_utf8", repr(raw.encode("utf-8", "surrogateescape")[:60]))
    text = " ".join(raw.split())
    if not text:
        return "", ("empty_caption", "")
    return text, None


def _stem(name: str) -> str:
    base = os.path.basename(name)
    root, ext = os.path.splitext(base)
    return root if ext.lower() in VIDEO_EXTS or ext == "." else base


def _video_resolver(video_dir: Path):
    """``resolve(vid, hint) -> (path, is a file)``. Extensions match in any case (cameras write ``.MP4``); an exact
    name wins over one that differs in case."""
    files: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(video_dir), key=lambda e: e.name)
    except OSError:
        entries = []
    exact = set()
    for e in entries:
        if not e.is_dir():
            exact.add(e.name)
            root, ext = os.path.splitext(e.name)
            files.setdefault(root + ext.lower(), e.name)

    def resolve(vid: str, hint: str | None) -> tuple[str, bool]:
        names = ([os.path.basename(hint)] if hint else []) + [vid + e for e in VIDEO_EXTS]
        stem = _stem(vid)
        if stem != vid:
            names += [stem + e for e in VIDEO_EXTS]
        for n in names:
            if n in exact:
                return str(video_dir / n), True
        for n in names:
            root, ext = os.path.splitext(n)
            found = files.get(root + ext.lower())
            if found is not None:
                return str(video_dir / found), True
        return str(video_dir / (os.path.basename(hint) if hint else vid + ".mp4")), False

    return resolve


def default_video_dir(root: str | os.PathLike) -> Path:
    """``root/videos`` when it exists, else ``root``."""
    root = Path(root)
    return root / "videos" if (root / "videos").is_dir() else root


def build_manifest(dataset: str, root: str | os.PathLike, split: str, video_dir: str | os.PathLike | None = None,
                   report: SkipReport | None = None, *, check_videos: bool = False) -> pa.Table:
    """Read a benchmark's annotation files under ``root`` and return the manifest rows of ``split``.

    ``video_dir`` defaults to ``root/videos`` (or ``root``); video paths are absolute. With ``check_videos`` a row whose
    video file does not exist is skipped (reason ``missing_file``); otherwise missing files are caught at decode time.
    """
    if dataset not in _ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(root, "annotation folder not found")
    report = report if report is not None else SkipReport(stage=f"manifest {dataset}/{split}")
    vdir = Path(video_dir) if video_dir is not None else default_video_dir(root)
    vdir = vdir.resolve()
    resolve = _video_resolver(vdir)
    cols: dict[str, list[str]] = {n: [] for n in MANIFEST_SCHEMA.names}
    seen: set[str] = set()
    for vid, hint, caps in _ADAPTERS[dataset](root, split, report):
        if not _is_utf8(vid):
            report.skip(repr(vid.encode("utf-8", "surrogateescape")), "bad_row", "video id is not valid UTF-8")
            continue
        if vid in seen:  # its captions would be counted twice (and the video twice in the gallery)
            report.skip(vid, "duplicate_id", f"{vid} is listed more than once in split {split!r}")
            continue
        seen.add(vid)
        path, exists = resolve(vid, hint)
        if check_videos and not exists:
            report.skip(vid, "missing_file", "", path)
            continue
        good = []
        for cid, raw in caps:
            text, reason = clean_caption(raw)
            if reason:
                report.skip(f"{vid}/{cid}", reason[0], reason[1])
            else:
                good.append((cid, text))
        if not good:
            if not caps:  # (rejected captions were counted above: the item is the caption)
                report.skip(vid, "no_caption", "empty caption list")
            continue
        for cid, text in good:
            cols["dataset"].append(dataset)
            cols["split"].append(split)
            cols["video_id"].append(vid)
            cols["video_path"].append(path)
            cols["caption_id"].append(cid)
            cols["caption"].append(text)
        report.add_ok(len(good))
    return pa.table(cols, schema=MANIFEST_SCHEMA)


def check_splits(table: pa.Table, splits: Iterable[str], *, disjoint: Iterable[tuple[str, str]] = (),
                 where: str = "") -> None:
    """Every split named has rows, and the pairs of splits in ``disjoint`` share no video; ``SplitError`` naming the
    split (and a few shared videos) otherwise. A video in both the training and the test split makes the test
    score a memorisation score."""
    vids: dict[str, set[str]] = {}
    for split in dict.fromkeys(splits):
        rows = table.filter(pc.equal(table["split"], split))
        if rows.num_rows == 0:
            raise SplitError(f"{where}split {split!r} is empty: no video of it has a usable caption")
        vids[split] = set(rows["video_id"].to_pylist())
    for a, b in disjoint:
        if a == b or a not in vids or b not in vids:
            continue
        shared = sorted(vids[a] & vids[b])
        if shared:
            raise SplitError(f"{where}{len(shared)} video(s) are in both split {a!r} and split {b!r} "
                             f"(e.g. {', '.join(shared[:3])}); set data.allow_split_overlap=true if that is meant")


def build_manifests(dataset: str, root: str | os.PathLike, splits: Iterable[str], video_dir=None,
                    report: SkipReport | None = None, *, check_videos: bool = False) -> pa.Table:
    """Several splits in one table."""
    tables = [build_manifest(dataset, root, s, video_dir, report, check_videos=check_videos) for s in splits]
    return pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()


def write_manifest(table: pa.Table, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def read_manifest(path: str | os.PathLike) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    table = pq.read_table(path)
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not a manifest: missing column(s) {missing}")
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def select_split(table: pa.Table, split: str) -> pa.Table:
    """Rows of ``split`` in manifest order."""
    return table.filter(pc.equal(table["split"], split))


def video_order(table: pa.Table) -> tuple[list[str], list[str], list[int]]:
    """``(video_ids, video_paths, video_index of each row)`` for one split: videos numbered by first appearance."""
    ids = table["video_id"].to_pylist()
    paths = table["video_path"].to_pylist()
    index: dict[str, int] = {}
    vids: list[str] = []
    vpaths: list[str] = []
    row_index = []
    for v, p in zip(ids, paths):
        if v not in index:
            index[v] = len(vids)
            vids.append(v)
            vpaths.append(p)
        row_index.append(index[v])
    return vids, vpaths, row_index
