"""Fuzz the readers with hostile inputs generated from a seed: tar shards (cut, huge declared sizes, repeated keys,
bad images, bad JSON, literal markers), caption CSV/JSONL, COCO / VQAv2 / MMC4 annotation files, evaluation
annotation files and run configs.

Each case runs under a deadline (SIGALRM: no hang) and tracemalloc (bounded memory) and checks:
- no traceback: a reader either returns or raises one of its documented errors, naming the file;
- every good record is yielded (or written) exactly once, in order;
- every bad record is counted under its reason, and nothing else is.

The expected result of a shard is computed from how it was built: the samples (groups of members) and, for a
cut shard, where the cut falls. A sample is yielded once the header of the next sample's first member is read,
so a cut inside the data of sample j keeps sample j-1, and a cut right at sample j's first header drops it.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import random
import resource
import signal
import tarfile
import tracemalloc
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from datafixtures import noisy
from test_hostile_shards import bomb_png

from frozenvl.config import ConfigError
from frozenvl.data import LoaderConfig, ShardDataset
from frozenvl.data.convert import convert_coco, convert_folder, convert_mmc4, convert_vqav2
from frozenvl.eval import records as R
from frozenvl.train.config import load_config

SEEDS = range(6)
DEADLINE_S = 10.0  # per case; every case takes well under a second
MEMORY_BOUND = 48 << 20  # tracemalloc peak per case
TEXT_CAP = 4096  # the loader's max_text_bytes in the shard cases
DEEP = "[" * 50_000 + "]" * 50_000
DEEP_SMALL = "[" * 2_000 + "]" * 2_000  # deeper than the stack, and under TEXT_CAP


@contextlib.contextmanager
def guarded(seconds: float = DEADLINE_S, memory: int = MEMORY_BOUND, trace: bool = True):
    """No hang (SIGALRM raises into the case) and bounded memory around one case: the tracemalloc peak, or
    (trace=False, for pure-Python parsers that tracing slows tenfold) the growth of the process's peak RSS."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"case still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # KiB -> bytes
    if trace:
        tracemalloc.start()
    try:
        yield
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - rss_before
        assert peak < memory, f"peak memory {peak >> 20} MiB"
    finally:
        if trace:
            tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_PNG_CACHE: dict[int, bytes] = {}


def png(seed: int) -> bytes:
    if seed not in _PNG_CACHE:
        buf = io.BytesIO()
        noisy(seed, 8).save(buf, format="PNG")
        _PNG_CACHE[seed] = buf.getvalue()
    return _PNG_CACHE[seed]


# --------------------------------------------------------------------------------------------- shards

@dataclass
class Group:
    """One sample as written: its members, the reason it is skipped (None: good) and when that reason is
    counted: 'read' (by the shard reader, on the header of member `trigger`) or 'decode' (by the loader)."""

    key: str
    members: list[tuple[str, bytes, int]]  # (extension, data, declared size)
    reason: str | None = None
    stage: str = "decode"
    trigger: int = 0
    caption: str = ""


def good_group(rng: random.Random, key: str) -> Group:
    caption = f"caption {key} " + " ".join(rng.choice(["red", "blue", "cat", "dog"]) for _ in range(3))
    data = caption.encode()
    return Group(key, [("png", png(rng.randrange(4)), 0), ("txt", data, len(data))], caption=caption)


def bad_group(rng: random.Random, key: str, earlier: list[Group]) -> Group:
    kind = rng.choice(["corrupt_image", "bomb", "bad_json", "deep_json", "list_json", "image_token",
                       "empty_text", "too_large", "not_utf8", "unknown_kind", "duplicate", "missing_image"])
    image = png(rng.randrange(4))
    members: list[tuple[str, bytes, int]]
    if kind == "duplicate":
        originals = [g for g in earlier[:-1] if g.reason != "duplicate_key"]  # never right after its original
        if originals:
            original = rng.choice(originals)
            other = b"a different caption"
            return Group(original.key, [("png", png(9), 0), ("txt", other, len(other))], "duplicate_key", "read")
        kind = "corrupt_image"
    table = {
        "corrupt_image": ("corrupt_image", [("png", image[: len(image) // 3], 0), ("txt", b"c", 0)]),
        "bomb": ("image_too_large", [("png", bomb_png(), 0), ("txt", b"c", 0)]),
        "bad_json": ("bad_json", [("json", b"{not json", 0), ("png", image, 0), ("txt", b"c", 0)]),
        "deep_json": ("bad_json", [("json", DEEP_SMALL.encode(), 0), ("png", image, 0), ("txt", b"c", 0)]),
        "list_json": ("bad_json", [("json", b"[1, 2]", 0), ("png", image, 0), ("txt", b"c", 0)]),
        "image_token": ("image_token_in_text", [("png", image, 0), ("txt", b"see <image> here", 0)]),
        "empty_text": ("empty_text", [("png", image, 0), ("txt", b"  \n ", 0)]),
        "not_utf8": ("bad_field", [("png", image, 0), ("txt", b"\xff\xfe\xfa", 0)]),
        "unknown_kind": ("unknown_kind", [("json", b'{"kind": "hologram"}', 0), ("png", image, 0)]),
        "missing_image": ("missing_field", [("txt", b"a caption without its image", 0)]),
        "too_large": ("member_too_large", [("png", image, 0), ("txt", b"w " * (TEXT_CAP // 2 + rng.randrange(1, 900)),
                                                                  0)]),
    }
    reason, members = table[kind]
    members = [(ext, data, len(data)) for ext, data, _ in members]
    if kind == "too_large":
        return Group(key, members, reason, "read", trigger=1)
    return Group(key, members, reason)


@dataclass
class Layout:
    groups: list[Group]
    headers: list[tuple[int, int, int]] = field(default_factory=list)  # (group, member, header offset)
    data_spans: list[tuple[int, int]] = field(default_factory=list)  # (data start, data end) per member


def write_shard(path: Path, groups: list[Group], huge_tail: bool) -> Layout:
    layout = Layout(groups)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for gi, g in enumerate(groups):
            for mi, (ext, data, _) in enumerate(g.members):
                info = tarfile.TarInfo(f"{g.key}.{ext}")
                info.size, info.mtime = len(data), 0
                layout.headers.append((gi, mi, buf.tell()))
                tar.addfile(info, io.BytesIO(data))
                start = layout.headers[-1][2] + 512
                layout.data_spans.append((start, start + len(data)))
    raw = buf.getvalue()
    if huge_tail:  # a last sample whose header declares 50 GB that the file does not hold
        end = layout.headers[-1][2] + 512 + ((len(groups[-1].members[-1][1]) + 511) // 512) * 512
        info = tarfile.TarInfo("zzhuge.png")
        info.size = 50 * 10**9
        raw = raw[:end] + info.tobuf(format=tarfile.GNU_FORMAT) + b"\x00" * 3000
        groups.append(Group("zzhuge", [("png", b"", info.size)], "member_too_large", "read"))
        layout.headers.append((len(groups) - 1, 0, end))
        layout.data_spans.append((end + 512, end + 512 + info.size))
    path.write_bytes(raw)
    return layout


def expected_for(layout: Layout, cut: int | None) -> tuple[list[str], Counter]:
    """The keys the loader yields and the skip counts, from the layout and the cut position (None: whole)."""
    groups = layout.groups
    if cut is None:
        complete = len(groups)  # every group read whole
        header_read = {(gi, mi) for gi, mi, _ in layout.headers}
    else:
        header_read = {(gi, mi) for (gi, mi, off) in layout.headers if off + 512 <= cut}
        # A member cut in its data stops the reader there; a cut at a header boundary is the end of the archive.
        reached = [(gi, mi) for i, (gi, mi, off) in enumerate(layout.headers)
                   if off + 512 <= cut and layout.data_spans[i][1] <= cut]
        # groups whose every member is whole, and that are followed by a read header of another group
        complete = 0
        for gi in range(len(groups)):
            whole = all((gi, mi) in reached for mi in range(len(groups[gi].members)))
            next_header = gi + 1 < len(groups) and (gi + 1, 0) in header_read
            if whole and next_header:
                complete = gi + 1
            else:
                break
    keys, counts = [], Counter()
    for gi, g in enumerate(groups):
        if g.stage == "read" and (gi, g.trigger) in header_read:
            counts[g.reason] += 1
        if gi < complete and g.stage == "decode":
            if g.reason is None:
                keys.append(g.key)
            else:
                counts[g.reason] += 1
    if cut is not None or groups[-1].key == "zzhuge":
        counts["truncated_shard"] += 1
    return keys, counts


def shard_case(rng: random.Random, folder: Path, index: int) -> tuple[Path, Layout, int | None]:
    groups: list[Group] = []
    for i in range(rng.randrange(4, 14)):
        key = f"s{index:02d}_{i:03d}"
        groups.append(good_group(rng, key) if rng.random() < 0.55 else bad_group(rng, key, groups))
    huge_tail = rng.random() < 0.2
    path = folder / f"shard-{index:03d}.tar"
    layout = write_shard(path, groups, huge_tail)
    cut = None
    if not huge_tail and rng.random() < 0.5:
        # Inside some member's data, or right at some member's header (never inside a header block).
        i = rng.randrange(1, len(layout.headers))
        start, end = layout.data_spans[i]
        cut = layout.headers[i][2] if rng.random() < 0.3 or end == start else rng.randrange(start, end)
        path.write_bytes(path.read_bytes()[:cut])
    return path, layout, cut


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_shards_yield_every_good_sample_once_and_count_every_bad_one(tmp_path, seed):
    rng = random.Random(seed)
    cfg = LoaderConfig(shuffle_shards=False, max_text_bytes=TEXT_CAP, max_tokens=10_000)
    for index in range(4):
        path, layout, cut = shard_case(rng, tmp_path, index)
        keys, counts = expected_for(layout, cut)
        with guarded():
            dataset = ShardDataset([str(path)], cfg)
            got = list(dataset)
        assert [s["key"] for s in got] == keys, (seed, index, cut)
        assert dataset.skips.as_dict() == dict(+counts), (seed, index, cut)
        by_key = {g.key: g for g in layout.groups if g.reason is None}
        assert all(s["caption"] == by_key[s["key"]].caption for s in got)  # the first of a repeated key


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_fuzzed_gzip_shards_and_a_gzip_bomb_caption(tmp_path, seed):
    rng = random.Random(100 + seed)
    groups = [good_group(rng, f"g{i}") if rng.random() < 0.6 else bad_group(rng, f"g{i}", []) for i in range(10)]
    big = b"a " * (rng.randrange(4, 12) << 20)  # megabytes of caption in a few kilobytes of gzip
    groups.insert(rng.randrange(1, 9), Group("bomb", [("png", png(0), 0), ("txt", big, len(big))],
                                             "member_too_large", "read", trigger=1))
    layout = write_shard(tmp_path / "plain.tar", groups, huge_tail=False)
    path = tmp_path / "bomb.tar.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress((tmp_path / "plain.tar").read_bytes(), compresslevel=1))
    assert path.stat().st_size < len(big) // 50
    keys, counts = expected_for(layout, None)
    with guarded(memory=40 << 20):
        dataset = ShardDataset([str(path)], LoaderConfig(shuffle_shards=False, max_text_bytes=TEXT_CAP,
                                                         max_tokens=10_000))
        assert [s["key"] for s in dataset] == keys
    assert dataset.skips.as_dict() == dict(+counts)


# --------------------------------------------------------------------------------------------- converters

def make_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(png(i % 4))
        names.append(f"img{i}.png")
    (folder / "corrupt.png").write_bytes(png(0)[:40])
    (folder / "bomb.png").write_bytes(bomb_png())
    return names


def caption_rows(rng: random.Random, names: list[str], jsonl: bool) -> tuple[list, list[str], Counter]:
    """Rows for convert_folder: (rows, expected keys in order, expected skip counts)."""
    rows, keys, counts = [], [], Counter()
    for i in range(rng.randrange(5, 25)):
        kind = rng.choice(["good"] * 5 + ["missing", "corrupt", "bomb", "empty", "huge"]
                          + (["deep", "notjson", "notobject", "badtype"] if jsonl else []))
        name = rng.choice(names)
        row: object = {"image": name, "caption": f"caption {i}"}
        reason = None
        if kind == "missing":
            row, reason = {"image": "nope.png", "caption": "c"}, "missing_image"
        elif kind == "corrupt":
            row, reason = {"image": "corrupt.png", "caption": "c"}, "corrupt_image"
        elif kind == "bomb":
            row, reason = {"image": "bomb.png", "caption": "c"}, "image_too_large"
        elif kind == "empty":
            row, reason = {"image": name, "caption": "   "}, "empty_text"
        elif kind == "huge":  # CSV: over the csv module's field limit; JSONL: fine, a long caption
            row = {"image": name, "caption": "x" * 140_000}
            reason = None if jsonl else "bad_field"
        elif kind == "deep":
            row, reason = DEEP, "bad_json"
        elif kind == "notjson":
            row, reason = "{broken", "bad_json"
        elif kind == "notobject":
            row, reason = [1, 2], "bad_json"
        elif kind == "badtype":
            row, reason = {"image": name, "caption": 42}, "bad_field"
        rows.append(row)
        if reason is None:
            keys.append(f"{Path(row['image']).stem}_{i}")
        else:
            counts[reason] += 1
    return rows, keys, counts


def written_keys(out: Path) -> list[str]:
    if not list(out.glob("*.tar")):
        return []
    return [s["key"] for s in ShardDataset(str(out), LoaderConfig(shuffle_shards=False, max_tokens=1_000_000))]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_caption_files_convert_every_good_row_once(tmp_path, seed):
    rng = random.Random(200 + seed)
    names = make_images(tmp_path / "imgs", 3)
    for fmt in ("csv", "jsonl"):
        rows, keys, counts = caption_rows(rng, names, jsonl=fmt == "jsonl")
        path = tmp_path / f"caps{seed}.{fmt}"
        if fmt == "csv":
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "caption"])
                writer.writerows([[r["image"], r["caption"]] for r in rows])
        else:
            path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
        out = tmp_path / f"out-{fmt}"
        with guarded():
            report = convert_folder(tmp_path / "imgs", path, out, shard_size=rng.randrange(1, 6), progress=False)
        assert report.skipped.as_dict() == dict(+counts), fmt
        assert report.written == len(keys) and sorted(written_keys(out)) == sorted(keys)


def mutate_file(rng: random.Random, path: Path) -> str:
    """Make an annotation file unusable as a whole; returns what was done."""
    how = rng.choice(["cut", "deep", "binary", "wrong_layout"])
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: rng.randrange(1, max(2, len(data) - 1))])
    elif how == "deep":
        path.write_text(DEEP)
    elif how == "binary":
        path.write_bytes(bytes(rng.randrange(128, 256) for _ in range(300)))
    else:
        path.write_text(json.dumps({"images": {"a": 1}, "annotations": 3, "questions": "x"}))
    return how


def annotation_error(call, path: Path) -> None:
    """A whole-file problem: exactly one ValueError, naming the file."""
    with guarded(), pytest.raises(ValueError) as err:
        call()
    assert path.name in str(err.value)


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_coco_vqav2_mmc4_files(tmp_path, seed):
    rng = random.Random(300 + seed)
    names = make_images(tmp_path / "imgs", 4)

    # COCO: images with bad ids / file names, annotations with bad image ids / captions, repeated ids.
    images, anns, keys, counts = [], [], [], Counter()
    for i, name in enumerate(names):
        images.append({"id": i, "file_name": name})
    images.append({"id": 99, "file_name": 99})  # a number: its captions are bad_field
    images.append({"id": [5], "file_name": "img0.png"})  # an unhashable id: bad_field (an image entry)
    counts["bad_field"] += 1
    for a in range(rng.randrange(4, 20)):
        kind = rng.choice(["good"] * 4 + ["badimage", "listid", "empty", "dupid", "numberfile"])
        image_id = rng.randrange(len(names))
        if kind == "good":
            anns.append({"image_id": image_id, "id": a, "caption": f"A picture {a}."})
            keys.append(f"coco{image_id}_{a}")
        elif kind == "badimage":
            anns.append({"image_id": 1234, "id": a, "caption": "No such image."})
            counts["missing_field"] += 1
        elif kind == "listid":
            anns.append({"image_id": [image_id], "id": a, "caption": "A list id."})
            counts["bad_field"] += 1
        elif kind == "empty":
            anns.append({"image_id": image_id, "id": a, "caption": " "})
            counts["empty_text"] += 1
        elif kind == "numberfile":
            anns.append({"image_id": 99, "id": a, "caption": "A number for a file name."})
            counts["bad_field"] += 1
        elif keys:  # the id of an earlier good annotation, on the same image: the same key
            first = keys[rng.randrange(len(keys))]
            img, ann_id = first[len("coco"):].split("_")
            anns.append({"image_id": int(img), "id": int(ann_id), "caption": "Same key."})
            counts["duplicate_key"] += 1
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns}))
    with guarded():
        report = convert_coco(coco, tmp_path / "imgs", tmp_path / "coco", progress=False)
    assert report.skipped.as_dict() == dict(+counts)
    assert sorted(written_keys(tmp_path / "coco")) == sorted(keys)

    # VQAv2: questions with bad ids, missing images, no answers, repeated ids.
    questions, answers, keys, counts = [], [], [], Counter()
    (tmp_path / "vqa").mkdir()
    for i in range(3):
        (tmp_path / "vqa" / f"COCO_val2014_{i:012d}.png").write_bytes(png(i))
    for q in range(rng.randrange(3, 15)):
        kind = rng.choice(["good"] * 4 + ["listid", "noimage", "noanswer", "dupid", "notdict"])
        if kind == "good" or (kind == "dupid" and not keys):
            questions.append({"question_id": q, "image_id": rng.randrange(3), "question": f"Q{q}?"})
            answers.append({"question_id": q, "answers": [{"answer": "yes"}]})
            keys.append(f"vqa{q}")
        elif kind == "listid":
            questions.append({"question_id": [q], "image_id": 0, "question": "?"})
            counts["bad_field"] += 1
        elif kind == "noimage":
            questions.append({"question_id": q, "image_id": 77, "question": "Where?"})
            counts["missing_image"] += 1
        elif kind == "noanswer":
            questions.append({"question_id": q, "image_id": 0, "question": "Why?"})
            counts["missing_field"] += 1
        elif kind == "notdict":
            questions.append(["not", "a", "question"])
            counts["missing_field"] += 1
        else:
            questions.append({"question_id": int(keys[0][3:]), "image_id": 1, "question": "Again?"})
            counts["duplicate_key"] += 1
    qpath, apath = tmp_path / "q.json", tmp_path / "a.json"
    qpath.write_text(json.dumps({"questions": questions}))
    apath.write_text(json.dumps({"annotations": answers}))
    with guarded():
        report = convert_vqav2(qpath, tmp_path / "vqa", tmp_path / "vqaout", annotations_json=apath, progress=False)
    assert report.skipped.as_dict() == dict(+counts)
    assert sorted(written_keys(tmp_path / "vqaout")) == sorted(keys)

    # MMC4: documents with bad lines, bad image entries, missing images.
    lines, keys, counts = [], [], Counter()
    for n in range(rng.randrange(3, 12)):
        kind = rng.choice(["good"] * 4 + ["deep", "binary", "notext", "noimages"])
        doc = {"text_list": ["Intro.", f"Sentence {n}."],
               "image_info": [{"image_name": rng.choice(names), "matched_text_index": 1}]}
        if kind == "good":
            if rng.random() < 0.5:  # one bad image entry and one missing image: counted, the page is kept
                doc["image_info"] += [{"image_name": ["x"], "matched_text_index": 0},
                                      {"image_name": "gone.png", "matched_text_index": 0}]
                counts.update({"bad_field": 1, "missing_image": 1})
            lines.append(json.dumps(doc).encode())
            keys.append(f"mmc4{n:08d}")
        elif kind == "deep":
            lines.append(DEEP.encode())
            counts["bad_json"] += 1
        elif kind == "binary":
            lines.append(b"\xff\xfe\x00garbage")
            counts["bad_json"] += 1
        elif kind == "notext":
            lines.append(json.dumps({"image_info": []}).encode())
            counts["missing_field"] += 1
        else:
            lines.append(json.dumps({"text_list": ["Only text."], "image_info": []}).encode())
            counts["no_images"] += 1
    mpath = tmp_path / "docs.jsonl"
    mpath.write_bytes(b"\n".join(lines) + b"\n")
    with guarded():
        report = convert_mmc4(mpath, tmp_path / "imgs", tmp_path / "mmc4", progress=False)
    assert report.skipped.as_dict() == dict(+counts)
    assert sorted(written_keys(tmp_path / "mmc4")) == sorted(keys)

    # The same files made unusable as a whole: one ValueError naming the file, nothing written.
    for path, call in ((coco, lambda: convert_coco(coco, tmp_path / "imgs", tmp_path / "x1", progress=False)),
                       (qpath, lambda: convert_vqav2(qpath, tmp_path / "vqa", tmp_path / "x2", progress=False))):
        how = mutate_file(rng, path)
        if how == "cut" and path.read_bytes().strip() in (b"{", b""):
            path.write_text("{")
        annotation_error(call, path)


# --------------------------------------------------------------------------------------------- evaluation files

@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_evaluation_annotation_files(tmp_path, seed):
    rng = random.Random(400 + seed)
    entries, good = [], []
    for q in range(rng.randrange(3, 20)):
        kind = rng.choice(["good"] * 3 + ["number", "list", "notdict", "noquestion", "badtemplate"])
        if kind == "good":
            entries.append({"question_id": q, "image_id": q, "question": f"Q{q}?"})
            good.append(str(q))
        elif kind == "number":
            entries.append({"question_id": q, "image_id": q, "question": 7})
        elif kind == "list":
            entries.append({"question_id": q, "image_id": [q], "question": "?"})
        elif kind == "notdict":
            entries.append(rng.choice([[1], "text", 3, None]))
        elif kind == "noquestion":
            entries.append({"question_id": q, "image_id": q})
        else:
            entries.append({"question_id": q, "image_id": "x", "question": "?"})
    path = tmp_path / "questions.json"
    path.write_text(json.dumps({"questions": entries}))
    with guarded(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = R.read_vqav2(path)
    assert [r.key for r in records] == good
    skipped = len(entries) - len(good)
    messages = [str(w.message) for w in caught]
    assert (f"questions.json: skipped {skipped} questions" in " ".join(messages)) == bool(skipped)
    mutate_file(rng, path)
    if path.read_text(errors="replace").strip() in ("", "{"):
        path.write_text("{")
    annotation_error(lambda: R.read_vqav2(path), path)


# --------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_configs_are_one_config_error(tmp_path, seed):
    rng = random.Random(500 + seed)
    good = ("model:\n  kind: flamingo\n  lm: tiny\n  vision: tiny\n"
            "data:\n  datasets:\n    pairs: {shards: x.tar, batch_size: 2}\ntrain:\n  max_steps: 3\n")
    for case in range(6):
        path = tmp_path / f"c{seed}_{case}.yaml"
        how = rng.choice(["cut", "binary", "deep", "flip", "wrongtype", "nul"])
        if how == "cut":
            path.write_text(good[: rng.randrange(len(good))])
        elif how == "binary":
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500))))
        elif how == "deep":
            path.write_text("a: " + "[" * rng.randrange(2_000, 8_000))
        elif how == "flip":
            data = bytearray(good.encode())
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(bytes(data))
        elif how == "wrongtype":
            path.write_text(good.replace("max_steps: 3", f"max_steps: {rng.choice(['[1]', 'many', '{a: 1}'])}"))
        else:
            path.write_bytes(good.encode()[:20] + b"\x00" + good.encode()[20:])
        with guarded(trace=False):
            try:
                load_config(path)
            except ConfigError as e:  # the only error a config may give, on one line
                assert "\n" not in str(e) or how in ("wrongtype", "cut", "flip")
                if how in ("binary", "deep", "nul"):
                    assert str(path) in str(e)
