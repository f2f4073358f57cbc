"""The Store contract (run here on file:// and in tests/integration/test_storage_s3.py on S3),
plus the file-store specifics: atomic writes, local paths, URI parsing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from evoquality.storage import FileStore, NotFound, S3Store, StoreError, open_store, split_uri


def race_put_if_absent(store, key: str, contenders: int = 8) -> list[bool]:
    """`contenders` threads create `key` at the same moment; returns who succeeded."""
    barrier = threading.Barrier(contenders, timeout=30)
    results: list[bool | None] = [None] * contenders

    def contend(i: int) -> None:
        barrier.wait()
        results[i] = store.put_if_absent(key, f"writer-{i}".encode())

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a contender did not finish"
    return results


class StoreContract:
    """Behaviour every Store backend must show; subclasses provide the `store` fixture."""

    def test_bytes_round_trip_and_overwrite(self, store):
        store.put_bytes("a/b/c.bin", b"one")
        assert store.get_bytes("a/b/c.bin") == b"one"
        store.put_bytes("a/b/c.bin", b"two")
        assert store.get_bytes("a/b/c.bin") == b"two"

    def test_exists(self, store):
        assert not store.exists("x.txt")
        store.put_bytes("x.txt", b"")
        assert store.exists("x.txt")
        assert store.get_bytes("x.txt") == b""

    def test_missing_key_raises_not_found(self, store):
        with pytest.raises(NotFound, match="nothing/here"):
            store.get_bytes("nothing/here")
        with pytest.raises(FileNotFoundError):  # NotFound is also a FileNotFoundError
            store.get_bytes("nothing/here")

    def test_list_is_sorted_and_uses_string_prefixes(self, store):
        for key in ["r/1/vote/b", "r/1/vote/a", "r/10/x", "r/2/y", "other"]:
            store.put_bytes(key, b".")
        assert store.list("r/1/") == ["r/1/vote/a", "r/1/vote/b"]
        assert store.list("r/1") == ["r/1/vote/a", "r/1/vote/b", "r/10/x"]
        assert store.list("r/1/vote/a") == ["r/1/vote/a"]
        assert store.list("") == ["other", "r/1/vote/a", "r/1/vote/b", "r/10/x", "r/2/y"]
        assert store.list("nope/") == []

    def test_put_if_absent_creates_once(self, store):
        assert store.put_if_absent("s/summary.json", b"first") is True
        assert store.put_if_absent("s/summary.json", b"second") is False
        assert store.get_bytes("s/summary.json") == b"first"

    def test_put_if_absent_race_has_exactly_one_winner(self, store):
        results = race_put_if_absent(store, "race/summary.json")
        assert results.count(True) == 1
        winner = results.index(True)
        assert store.get_bytes("race/summary.json") == f"writer-{winner}".encode()

    def test_file_round_trip(self, store, tmp_path):
        src = tmp_path / "src.bin"
        src.write_bytes(bytes(range(256)) * 100)
        store.put_file("files/src.bin", src)
        dest = tmp_path / "deep" / "dest.bin"
        store.get_file("files/src.bin", dest)
        assert dest.read_bytes() == src.read_bytes()
        with pytest.raises(NotFound):
            store.get_file("files/missing.bin", tmp_path / "m.bin")
        assert not (tmp_path / "m.bin").exists()

    def test_dir_round_trip(self, store, tmp_path):
        src = tmp_path / "ckpt"
        (src / "sub").mkdir(parents=True)
        (src / "config.json").write_text("{}")
        (src / "sub" / "weights.bin").write_bytes(b"w" * 1000)
        keys = store.put_dir("run/checkpoint", src)
        assert keys == ["run/checkpoint/config.json", "run/checkpoint/sub/weights.bin"]
        paths = store.get_dir("run/checkpoint/", tmp_path / "copy")
        assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in paths) == [
            "config.json",
            "sub/weights.bin",
        ]
        assert (tmp_path / "copy" / "sub" / "weights.bin").read_bytes() == b"w" * 1000
        with pytest.raises(NotFound, match="no objects under"):
            store.get_dir("run/nothing", tmp_path / "none")

    def test_child_store_sees_the_same_objects(self, store):
        store.child("ns/run").put_bytes("spec.json", b"{}")
        assert store.get_bytes("ns/run/spec.json") == b"{}"
        assert store.child("ns").child("run").list("") == ["spec.json"]
        assert store.child("ns/run").uri == store.uri.rstrip("/") + "/ns/run"

    @pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/../b", "./a", "a\\b"])
    def test_invalid_keys_are_rejected(self, store, bad):
        with pytest.raises(StoreError, match="invalid key"):
            store.put_bytes(bad, b"x")

    def test_no_delete_method(self, store):
        assert not any(hasattr(store, n) for n in ("delete", "remove", "delete_prefix"))


class TestFileStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path) -> FileStore:
        return open_store(str(tmp_path / "root"))

    def test_writes_leave_no_temporary_files(self, store, tmp_path):
        store.put_bytes("a/x", b"1")
        store.put_if_absent("a/y", b"2")
        store.put_if_absent("a/y", b"3")
        src = tmp_path / "f"
        src.write_bytes(b"f")
        store.put_file("a/z", src)
        assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["x", "y", "z"]

    def test_local_path_is_the_real_file(self, store):
        store.put_bytes("m/w.bin", b"abc")
        path = store.local_path("m/w.bin")
        assert path == store.root / "m" / "w.bin"
        assert path.read_bytes() == b"abc"
        assert store.local_path("m/") == store.root / "m"


def test_open_store_accepts_file_uris_and_paths(tmp_path):
    by_uri = open_store(tmp_path.as_uri())
    by_path = open_store(str(tmp_path))
    assert isinstance(by_uri, FileStore)
    assert by_uri.root == by_path.root == tmp_path
    assert by_uri.uri == tmp_path.as_uri()
    assert by_uri.uri_for("a/b") == tmp_path.as_uri() + "/a/b"


def test_open_store_parses_s3_uris(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = open_store("s3://bucket/some/prefix/")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == (
        "bucket",
        "some/prefix",
        "s3://bucket/some/prefix",
    )
    assert store.endpoint_url == "http://127.0.0.1:9"
    assert store.local_path("x") is None
    assert (
        open_store("s3://b", endpoint_url="http://127.0.0.1:8").endpoint_url == "http://127.0.0.1:8"
    )


@pytest.mark.parametrize("uri", ["gs://bucket/x", "s3:///nobucket", "file://host/path"])
def test_open_store_rejects_bad_uris(uri):
    with pytest.raises(StoreError, match="URI"):
        open_store(uri)


def test_split_uri():
    assert split_uri("s3://b/dir/m.csv") == ("s3://b/dir", "m.csv")
    assert split_uri("s3://b/m.csv") == ("s3://b", "m.csv")
    assert split_uri("file:///data/m.csv") == ("/data", "m.csv")
    assert split_uri("/data/x/m.csv") == ("/data/x", "m.csv")
    assert split_uri("rel/m.csv") == (str(Path("rel").absolute()), "m.csv")
    with pytest.raises(StoreError):
        split_uri("s3://bucket-only")
