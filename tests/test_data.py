"""Image sources: folders, CelebA-HQ style LMDBs, prepare-lmdb, splits, batching and the prepare-lmdb CLI."""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings

import lmdb
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from asyrp import cli
from asyrp.io import datasets as data
from asyrp.io import lmdb_writer
from asyrp.io import images
from asyrp.io.datasets import ImageFolder, LMDBImages, Subset, batches, open_images, select, take
from asyrp.io.images import DataError, SkippedFilesWarning
from asyrp.io.splits import load_split, make_split, save_split
from asyrp.io.lmdb_writer import prepare_lmdb
from asyrp.io.files import sha256_file

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _striped(width: int, height: int) -> Image.Image:
    """A wide image: red left quarter, blue right quarter, a centre square with a gradient."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 4] = RED
    arr[:, -width // 4:] = BLUE
    centre = arr[:, width // 4: -width // 4]
    centre[..., 1] = np.linspace(0, 255, centre.shape[1], dtype=np.uint8)[None, :]
    centre[..., 2] = np.linspace(0, 200, centre.shape[0], dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


@pytest.fixture
def mixed_folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    _striped(40, 20).save(root / "b_wide.png")
    _striped(40, 20).transpose(Image.Transpose.ROTATE_90).save(root / "tall.png")  # 20 × 40
    _noise(30, 30, 1).save(root / "a.JPG", quality=95)
    _noise(24, 18, 2).save(root / "sub" / "c.webp")
    rgba = _noise(16, 16, 3).convert("RGBA")
    rgba.putalpha(77)
    rgba.save(root / "rgba.png")
    _noise(16, 16, 4).convert("L").save(root / "gray.png")
    palette = _noise(16, 16, 5).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    palette.save(root / "palette.png", transparency=0)
    (root / "corrupt.png").write_bytes(b"this is not a png at all" * 10)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\1\2")  # hidden: ignored silently
    return root


def _folder(root, image_size=8, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        return ImageFolder(root, image_size, **kwargs)


# --------------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------------

def test_folder_order_names_and_one_warning(mixed_folder):
    with pytest.warns(SkippedFilesWarning) as record:
        ds = ImageFolder(mixed_folder, 8)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 9 files" in message and str(mixed_folder) in message
    assert "corrupt.png" in message and "notes.txt" in message and ".DS_Store" not in message
    assert ds.names == ["a", "b_wide", "gray", "palette", "rgba", "sub__c", "tall"]
    assert [p.name for p in ds.files] == ["a.JPG", "b_wide.png", "gray.png", "palette.png", "rgba.png", "c.webp",
                                          "tall.png"]
    assert len(ds) == 7


def test_items_range_sources_and_sha256(mixed_folder):
    ds = _folder(mixed_folder, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning must not surface
        items = [ds[i] for i in range(len(ds))]
    for item, path in zip(items, ds.files):
        assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert item["source"] == str(path) and path.is_absolute()
        assert item["sha256"] == sha256_file(path)
    again = _folder(mixed_folder, 8)
    for i, item in enumerate(items):
        assert again[i]["sha256"] == item["sha256"] and torch.equal(again[i]["image"], item["image"])
    assert torch.equal(ds[-1]["image"], items[-1]["image"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    # a changed file changes its hash
    _noise(30, 30, 9).save(ds.files[0], format="JPEG")
    assert ds[0]["sha256"] != items[0]["sha256"]


def test_centre_crop_and_bilinear_resize(mixed_folder):
    ds = _folder(mixed_folder, 8)
    wide = Image.open(mixed_folder / "b_wide.png").convert("RGB")
    expected = wide.crop((10, 0, 30, 20)).resize((8, 8), Image.Resampling.BILINEAR)
    got = ds[ds.names.index("b_wide")]["image"]
    assert torch.equal(got, TF.normalize(TF.to_tensor(expected), [0.5] * 3, [0.5] * 3))
    # the crop kept the centre: no red (left) or pure blue (right) strip survives
    red = got[0]
    assert torch.all(red == -1)
    tall = ds[ds.names.index("tall")]["image"]
    assert torch.equal(tall, TF.normalize(TF.to_tensor(Image.open(mixed_folder / "tall.png").convert("RGB").crop(
        (0, 10, 20, 30)).resize((8, 8), Image.Resampling.BILINEAR)), [0.5] * 3, [0.5] * 3))


def test_uniform_centre_maps_to_exact_values(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = RED
    arr[:, 10:30] = GREEN
    arr[:, 30:] = BLUE
    Image.fromarray(arr).save(tmp_path / "x.png")
    image = ImageFolder(tmp_path, 8)[0]["image"]
    assert torch.equal(image, torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 8, 8))


def test_modes_are_converted_to_rgb(mixed_folder):
    ds = _folder(mixed_folder, 16)
    gray = ds[ds.names.index("gray")]["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    rgba = ds[ds.names.index("rgba")]["image"]
    assert torch.equal(rgba, images.to_tensor(Image.open(mixed_folder / "rgba.png").convert("RGB")))


def test_sixteen_bit_grey_and_exif_rotation(tmp_path):
    values = np.full((8, 8), 32896, np.uint16)  # 128 * 257
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert np.asarray(images.decode_rgb((tmp_path / "deep.png").read_bytes())).max() == 128
    photo = _noise(20, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif)
    assert images.decode_rgb(buffer.getvalue()).size == (10, 20)


def test_to_tensor_matches_torchvision():
    img = _noise(9, 7)
    assert torch.equal(images.to_tensor(img), TF.normalize(TF.to_tensor(img), [0.5] * 3, [0.5] * 3))


def test_empty_and_unreadable_folders_raise(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images in .*empty.*empty"):
        ImageFolder(empty, 8)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "bad.jpg").write_bytes(b"garbage")
    (junk / "readme.md").write_text("hi")
    with pytest.raises(DataError) as info:
        ImageFolder(junk, 8)
    message = str(info.value)
    assert "\n" not in message and str(junk) in message and "bad.jpg" in message and "readme.md" in message
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing", 8)


def test_truncated_image_fails_at_load_with_its_name(tmp_path):
    buffer = io.BytesIO()
    _noise(32, 32).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:200])  # header fine, data missing
    (tmp_path / "ok.png").write_bytes(buffer.getvalue())
    ds = ImageFolder(tmp_path, 8)
    assert ds.names == ["cut", "ok"]
    with pytest.raises(DataError, match="cut.png"):
        ds[0]


def test_names_unique_and_layout_options(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for name in ("x.jpg", "x.png", "train/y.png", "test/z.png"):
        _noise(8, 8).save(tmp_path / name)
    ds = ImageFolder(tmp_path, 8)
    assert ds.names == ["test__z", "train__y", "x_jpg", "x_png"]
    assert ImageFolder(tmp_path, 8, recursive=False).names == ["x_jpg", "x_png"]
    assert ImageFolder(tmp_path, 8, split="train").names == ["y"]
    single = ImageFolder(tmp_path / "train" / "y.png", 8)
    assert single.names == ["y"] and single[0]["image"].shape == (3, 8, 8)
    with pytest.raises(DataError, match="val"):
        ImageFolder(tmp_path, 8, split="val")


# --------------------------------------------------------------------------------------------------
# prepare_lmdb and LMDBImages
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def source_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _noise(40, 24, 0).save(src / "2.png")
    _noise(20, 20, 1).save(src / "10.png")  # sorted as strings: "10.png" < "2.png", as the reference
    _noise(33, 50, 2).convert("L").save(src / "3.jpg")
    return src


def _reference_record(path, size, resample=Image.Resampling.BILINEAR):
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize((size, size), resample).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def _read_all(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}
    env.close()
    return records


def test_prepare_lmdb_matches_reference_layout(source_folder, tmp_path):
    out = tmp_path / "LMDB_test"
    assert prepare_lmdb(source_folder, out, sizes=(16, 32), progress=False) == 3
    records = _read_all(out)
    assert set(records) == {f"{s}-{i:05d}" for s in (16, 32) for i in range(3)} | {"length"}
    assert records["length"] == b"3"
    order = ["10.png", "2.png", "3.jpg"]
    for i, name in enumerate(order):
        for s in (16, 32):
            assert records[f"{s}-{i:05d}"] == _reference_record(source_folder / name, s)
    assert (out / "data.mdb").stat().st_size < 8 << 20  # not a 1 TiB map

    ds = LMDBImages(out, 16)
    assert ds.resolution == 16 and ds.names == ["00000", "00001", "00002"]
    item = ds[1]
    decoded = Image.open(io.BytesIO(records["16-00001"])).convert("RGB")
    assert torch.equal(item["image"], images.to_tensor(decoded))
    assert item["source"] == f"lmdb:{out}#1" and item["name"] == "00001"
    assert item["sha256"] == hashlib.sha256(records["16-00001"]).hexdigest()
    # stored size chosen for a smaller image_size: the next larger one, then resized
    small = LMDBImages(out, 8)
    assert small.resolution == 16
    assert torch.equal(small[0]["image"], images.to_tensor(
        Image.open(io.BytesIO(records["16-00000"])).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)))
    assert LMDBImages(out, 8, resolution=32).resolution == 32
    with pytest.raises(DataError, match="resolution 64"):
        LMDBImages(out, 8, resolution=64)
    # survives pickling (DataLoader workers) after use
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["image"], item["image"])


def test_prepare_lmdb_lanczos_and_workers(source_folder, tmp_path):
    prepare_lmdb(source_folder, tmp_path / "lanczos", sizes=[16], resample="lanczos", workers=2, progress=False)
    records = _read_all(tmp_path / "lanczos")
    assert records["16-00000"] == _reference_record(source_folder / "10.png", 16, Image.Resampling.LANCZOS)
    assert records["16-00001"] == _reference_record(source_folder / "2.png", 16, Image.Resampling.LANCZOS)
    assert records["16-00001"] != _reference_record(source_folder / "2.png", 16)
    with pytest.raises(DataError, match="resample"):
        prepare_lmdb(source_folder, tmp_path / "x", resample="nearest")


def test_interrupted_prepare_leaves_nothing(source_folder, tmp_path, monkeypatch):
    real_encode = lmdb_writer.encode_image
    calls = []

    def failing_encode(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("killed half way")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(lmdb_writer, "encode_image", failing_encode)
    out = tmp_path / "LMDB_train"
    with pytest.raises(RuntimeError, match="half way"):
        prepare_lmdb(source_folder, out, sizes=(16,), progress=False)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no partial folder left either


def test_prepare_lmdb_overwrite_rules(source_folder, tmp_path):
    out = tmp_path / "lmdb"
    prepare_lmdb(source_folder, out, sizes=(16,), progress=False)
    with pytest.raises(DataError, match="already exists"):
        prepare_lmdb(source_folder, out, sizes=(16,), progress=False)
    prepare_lmdb(source_folder, out, sizes=(8,), progress=False, overwrite=True)
    assert "8-00000" in _read_all(out) and "16-00000" not in _read_all(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lmdb", "src"]
    # never deletes a folder that is not an LMDB
    with pytest.raises(DataError, match="does not look like an LMDB"):
        prepare_lmdb(source_folder, source_folder, sizes=(16,), progress=False, overwrite=True)
    assert len(list(source_folder.iterdir())) == 3


def test_prepare_lmdb_grows_the_map(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        _noise(64, 64, i).save(src / f"{i}.png")
    monkeypatch.setattr(lmdb_writer, "_initial_map_size", lambda n, sizes: 16 << 10)
    prepare_lmdb(src, tmp_path / "out", sizes=(64,), progress=False)
    records = _read_all(tmp_path / "out")
    assert records["length"] == b"6" and sum(map(len, records.values())) > 32 << 10  # could not fit in 16 KiB


def test_lmdb_errors(tmp_path):
    with pytest.raises(DataError, match="no data.mdb"):
        LMDBImages(tmp_path, 8)
    env = lmdb.open(str(tmp_path / "nolength"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"256-00000", b"x")
    env.close()
    with pytest.raises(DataError, match="'length'"):
        LMDBImages(tmp_path / "nolength", 8)
    env = lmdb.open(str(tmp_path / "short"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"256-00000", b"x")
        txn.put(b"length", b"5")
    env.close()
    with pytest.raises(DataError, match="256-00004"):
        LMDBImages(tmp_path / "short", 8)


# --------------------------------------------------------------------------------------------------
# Splits, views, open_images, batches
# --------------------------------------------------------------------------------------------------

def test_make_split_is_deterministic_and_disjoint():
    names = [f"{i:05d}" for i in range(50)]
    split = make_split(names, 10, seed=3)
    assert split == make_split(list(reversed(names)), 10, seed=3)
    assert len(split["test"]) == 10 and len(split["train"]) == 40
    assert not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == names
    assert split["train"] == sorted(split["train"]) and split["test"] == sorted(split["test"])
    assert make_split(names, 10, seed=4) != split
    assert len(make_split(names, 0.25, seed=0)["test"]) == 13  # 12.5 rounds half up
    assert make_split(names, np.int64(10), seed=3) == split
    for bad in (51, -1, 1.5, "3"):
        with pytest.raises(DataError):
            make_split(names, bad)
    with pytest.raises(DataError, match="unique"):
        make_split(["a", "a"], 1)


def test_split_files_round_trip_and_validation(tmp_path):
    split = make_split(["a", "b", "c", "d"], 2, seed=0)
    save_split(tmp_path / "split.json", split)
    assert load_split(tmp_path / "split.json") == split
    (tmp_path / "overlap.json").write_text('{"train": ["a", "b"], "test": ["b"]}')
    with pytest.raises(DataError, match="both"):
        load_split(tmp_path / "overlap.json")
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"train": "a"}')
    with pytest.raises(DataError):
        load_split(tmp_path / "bad.json")


def test_select_subset_and_take(tmp_path):
    for i in range(5):
        _noise(8, 8, i).save(tmp_path / f"img{i}.png")
    ds = ImageFolder(tmp_path, 8)
    view = select(ds, ["img3", "img0"])
    assert view.names == ["img3", "img0"] and view[0]["name"] == "img3" and view[1]["name"] == "img0"
    with pytest.raises(DataError) as info:
        select(ds, ["img1", "nope", "ghost"])
    assert "nope" in str(info.value) and "ghost" in str(info.value) and "img1" not in str(info.value)
    assert take(ds, 2).names == ["img0", "img1"]
    assert take(ds, 2, start=3).names == ["img3", "img4"]
    assert take(ds, None, start=4).names == ["img4"]
    with pytest.raises(DataError, match="only 5"):
        take(ds, 3, start=3)
    nested = Subset(take(ds, 3, start=1), [2, 0])
    assert nested.names == ["img3", "img1"] and nested.dataset is ds and nested[0]["name"] == "img3"


def test_open_images_dispatch(source_folder, tmp_path):
    assert isinstance(open_images(source_folder, 8), ImageFolder)
    root = tmp_path / "celeba_hq"
    prepare_lmdb(source_folder, root / "LMDB_train", sizes=(16,), progress=False)
    prepare_lmdb(source_folder, root / "LMDB_test", sizes=(16,), progress=False)
    assert isinstance(open_images(root / "LMDB_test", 16), LMDBImages)
    test = open_images(root, 16, split="test")
    assert isinstance(test, LMDBImages) and test.path == root / "LMDB_test"
    with pytest.raises(DataError, match="train, test|split"):
        open_images(root, 16)
    with pytest.raises(DataError, match="val"):
        open_images(root, 16, split="val")
    save_split(tmp_path / "split.json", {"train": ["00002", "00000"], "test": ["00001"]})
    chosen = open_images(root / "LMDB_train", 16, split=f"{tmp_path / 'split.json'}:train")
    assert chosen.names == ["00002", "00000"]
    assert open_images(root / "LMDB_train", 16, split=(tmp_path / "split.json", "test")).names == ["00001"]
    assert open_images(root, 16, split="train", n=2, start=1).names == ["00001", "00002"]
    with pytest.raises(DataError, match="part 'val'"):
        open_images(root / "LMDB_train", 16, split=f"{tmp_path / 'split.json'}:val")
    with pytest.raises(DataError, match="does not exist"):
        open_images(tmp_path / "nowhere", 16)


def test_batches_in_order(tmp_path):
    for i in range(5):
        _noise(8, 8, i).save(tmp_path / f"{i}.png")
    ds = ImageFolder(tmp_path, 8)
    got = list(batches(ds, 2))
    assert [b["image"].shape[0] for b in got] == [2, 2, 1]
    assert [name for b in got for name in b["name"]] == ds.names
    assert torch.equal(got[1]["image"][0], ds[2]["image"])
    assert isinstance(got[0]["sha256"], list) and isinstance(got[0]["source"], list)


def test_lmdb_in_dataloader_workers(source_folder, tmp_path):
    prepare_lmdb(source_folder, tmp_path / "lmdb", sizes=(8,), progress=False)
    ds = LMDBImages(tmp_path / "lmdb", 8)
    twin = LMDBImages(tmp_path / "lmdb", 8)  # a second dataset over the same files shares the handle
    in_workers = torch.cat([b["image"] for b in batches(ds, 2, num_workers=1)])
    assert torch.equal(in_workers, torch.stack([twin[i]["image"] for i in range(3)]))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def test_cli_prepare_lmdb(source_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["prepare-lmdb", str(source_folder), str(out), "--size", "16,32"]) == 0
    assert _read_all(out)["length"] == b"3" and "wrote 3 images" in capsys.readouterr().out
    assert cli.main(["prepare-lmdb", str(source_folder), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err

    assert cli.main(["prepare-lmdb", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("asyrp prepare-lmdb: error:") and "does not exist" in err
    assert not (tmp_path / "out2").exists()
    assert cli.main(["prepare-lmdb", str(source_folder), str(tmp_path / "out3"), "--size", "16,x"]) == 2
    (source_folder / "broken.png").write_bytes(b"junk")
    assert cli.main(["prepare-lmdb", str(source_folder), str(tmp_path / "out4"), "--size", "8"]) == 0
    assert "asyrp prepare-lmdb: warning: skipped 1 of 4 files" in capsys.readouterr().err
