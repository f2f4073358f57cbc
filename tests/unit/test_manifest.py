"""Manifest parsing, writing, bad manifests and the pyiqa conversion."""

from __future__ import annotations

import numpy as np
import pytest

from evoquality.data.manifest import ManifestError, convert_pyiqa, read_manifest, write_manifest
from evoquality.storage import open_store


def write(path, text: str):
    path.write_text(text)
    return path


def test_reads_paths_mos_and_extra_columns(tmp_path):
    (tmp_path / "bench").mkdir()
    path = write(
        tmp_path / "bench" / "m.csv",
        "image,mos,split\nimgs/a.png,4.5,test\n/abs/b.png,1,train\ns3://bkt/c.png,3.25,test\n",
    )
    m = read_manifest(str(path))
    assert len(m) == 3
    assert m.ids == ["imgs/a.png", "/abs/b.png", "s3://bkt/c.png"]
    assert m.images == [str(tmp_path / "bench" / "imgs" / "a.png"), "/abs/b.png", "s3://bkt/c.png"]
    np.testing.assert_allclose(m.mos, [4.5, 1.0, 3.25])
    assert m.columns == {"split": ["test", "train", "test"]}
    assert read_manifest(path.as_uri()).images == m.images


def test_pool_without_mos_and_max_images(tmp_path):
    path = write(tmp_path / "pool.csv", "image\n" + "".join(f"{i}.jpg\n" for i in range(10)))
    m = read_manifest(str(path), max_images=4)
    assert m.mos is None
    assert m.ids == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_subset_and_rows_round_trip(tmp_path):
    rows = [{"image": f"{i}.png", "mos": i / 2, "ref": f"r{i % 2}"} for i in range(5)]
    write_manifest(tmp_path / "m.csv", rows)
    m = read_manifest(str(tmp_path / "m.csv"))
    sub = m.subset([4, 1])
    assert sub.ids == ["4.png", "1.png"]
    np.testing.assert_allclose(sub.mos, [2.0, 0.5])
    assert sub.columns == {"ref": ["r0", "r1"]}
    assert sub.images == [str(tmp_path / "4.png"), str(tmp_path / "1.png")]
    assert m.rows() == rows


def test_write_puts_image_and_mos_first(tmp_path):
    write_manifest(tmp_path / "m.csv", [{"ref": "x", "mos": 2.0, "image": "a.png"}])
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "image,mos,ref"
    with pytest.raises(ManifestError, match="row 0 .* no 'image'"):
        write_manifest(tmp_path / "bad.csv", [{"mos": 1}])


def test_s3_manifest_resolves_images_under_its_folder(tmp_path):
    local = open_store(str(tmp_path))
    local.put_bytes("data/pool.csv", b"image\nx/1.png\n")
    opened = []

    def factory(uri: str):
        opened.append(uri)
        return local.child("data")

    m = read_manifest("s3://bucket/data/pool.csv", store_factory=factory)
    assert opened == ["s3://bucket/data"]
    assert m.images == ["s3://bucket/data/x/1.png"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("path,mos\na.png,1\n", "no 'image' column"),
        ("image,mos\n", "has no rows"),
        ("image,mos\na.png,4\nb.png,good\n", r"row 3: mos 'good' is not a number"),
        ("image,mos\na.png,\n", r"row 2: mos '' is not a number"),
        ("image,mos\na.png,nan\n", "not finite"),
        ("image\na.png\n,\n", r"row 3: empty 'image'"),
        ("image\na.png\nb.png\na.png\n", r"row 4: image 'a.png' repeats row 2"),
    ],
)
def test_bad_manifests(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(ManifestError, match=message) as err:
        read_manifest(str(path))
    assert str(path) in str(err.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.csv"))


def test_convert_pyiqa_with_header(tmp_path):
    meta = write(tmp_path / "meta.csv", "image_name,MOS,std\n1.jpg,60.5,2\n2.jpg,70,3\n")
    out = tmp_path / "koniq" / "manifest.csv"
    assert convert_pyiqa(meta, "1024x768", out) == 2
    m = read_manifest(str(out))
    assert m.ids == ["1024x768/1.jpg", "1024x768/2.jpg"]
    assert m.images[0] == str(tmp_path / "koniq" / "1024x768" / "1.jpg")
    np.testing.assert_allclose(m.mos, [60.5, 70.0])
    assert m.columns == {"std": ["2", "3"]}


def test_convert_pyiqa_headerless_named_columns_and_s3(tmp_path):
    meta = write(tmp_path / "meta.csv", "a.bmp,0.5\nb.bmp,0.25\n")
    out = tmp_path / "m.csv"
    assert convert_pyiqa(meta, "s3://bucket/live", out) == 2
    assert read_manifest(str(out)).ids == ["s3://bucket/live/a.bmp", "s3://bucket/live/b.bmp"]
    named = write(tmp_path / "named.csv", "dmos,name\n3.5,x.png\n")
    convert_pyiqa(named, "/data", out, mos_column="dmos", image_column="name")
    assert read_manifest(str(out)).ids == ["/data/x.png"]
    broken = write(tmp_path / "broken.csv", "a.png,1\nb.png\n")
    with pytest.raises(ManifestError, match="row 2: 1 cells, expected 2"):
        convert_pyiqa(broken, "d", out)
