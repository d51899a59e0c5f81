"""The manifest's JSON (DESIGN §5): the compact form ``json.dumps`` gives, whatever the paths hold, and read back."""

import json

from publisher.destinations.manifest import FileEntry, Manifest


def test_the_json_is_what_json_dumps_writes_and_reads_back():
    manifest = Manifest(release="20300101T000000-b7-a2", build=7, attempt=2, created_at="now", parent=None, pages=3)
    paths = ["b/index.html", 'quote"and\\back/index.html', "ünïcode/index.html", "a/index.html", "tab\there.css"]
    for n, path in enumerate(paths):
        manifest.add(FileEntry(path, f"{n:064x}", n * 1000, "text/html; charset=utf-8", f"{n:032x}" if n % 2 else ""))
    expected = {
        "format": 1,
        "release": manifest.release,
        "build": 7,
        "attempt": 2,
        "created_at": "now",
        "parent": None,
        "pages": 3,
        "files": {
            e.path: {
                "sha256": e.sha256,
                "size": e.size,
                "type": e.content_type,
                **({"input": e.input} if e.input else {}),
            }
            for e in sorted(manifest.files.values(), key=lambda e: e.path)
        },
    }
    assert manifest.to_json() == json.dumps(expected, separators=(",", ":")) + "\n"
    back = Manifest.from_json(manifest.to_json())
    assert back == manifest
    assert list(json.loads(manifest.to_json())["files"]) == sorted(paths)


def test_a_manifest_without_inputs_reads_as_files_rendered_from_nothing_known():
    text = json.dumps(
        {
            "format": 1,
            "release": "r",
            "build": 1,
            "attempt": 1,
            "files": {"a": {"sha256": "0" * 64, "size": 1, "type": "t"}},
        }
    )
    assert Manifest.from_json(text).files["a"].input == ""


def test_a_manifest_read_beside_another_shares_the_entries_they_have_in_common():
    """A build holds the live manifest and the recycled release's: their equal entries are held once, and an entry
    that differs in anything (bytes, size, type, input) is the file's own."""
    live = Manifest(release="r1", build=1, attempt=1)
    for n in range(6):
        live.add(FileEntry(f"p{n}/index.html", f"{n:064x}", 100 + n, "text/html; charset=utf-8", f"{n:032x}"))
    other = Manifest.from_json(live.to_json())
    changed = {
        "p1/index.html": {"sha256": "f" * 64},
        "p2/index.html": {"size": 1},
        "p3/index.html": {"type": "text/plain"},
    }
    data = json.loads(other.to_json())
    for path, fields in changed.items():
        data["files"][path].update(fields)
    del data["files"]["p4/index.html"]["input"]  # rendered from an unknown input
    data["files"]["new/index.html"] = {"sha256": "e" * 64, "size": 5, "type": "text/css"}
    read = Manifest.from_json(json.dumps(data), shared=live.files)
    same = {path for path, entry in read.files.items() if entry is live.files.get(path)}
    assert same == {"p0/index.html", "p5/index.html"}
    assert read.files["p1/index.html"].sha256 == "f" * 64 and read.files["p4/index.html"].input == ""
    assert json.loads(read.to_json())["files"] == data["files"]


def test_the_json_in_parts_is_the_json_whatever_the_count():
    """The local destination writes the manifest part by part; every count of entries (none, one part exactly,
    parts and a rest) gives the same text as ``to_json``, which is json's."""
    for count in (0, 1, 3, 4, 7, 8):
        manifest = Manifest(release="r", build=1, attempt=1)
        for n in range(count):
            manifest.add(FileEntry(f"p{n}/index.html", f"{n:064x}", n, "text/html; charset=utf-8"))
        parts = list(manifest.json_parts(entries_per_part=4))
        assert "".join(parts) == manifest.to_json(), count
        assert json.loads("".join(parts))["files"] == json.loads(manifest.to_json())["files"]
        assert len(json.loads("".join(parts))["files"]) == count
        assert len(parts) == 2 + count // 4, (count, parts)  # the head, each full part, the rest
