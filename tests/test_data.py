"""Data: in-memory datasets, tensor augmentation, ImageFolder trees and archives, clear errors."""

import tarfile
import warnings

import pytest
import torch
from PIL import Image

from eldarts_cli.config.sections import DataConfig
from eldarts_cli.core.errors import DataError
from eldarts_cli.data.datasets import load_images, split_indices
from eldarts_cli.data.loaders import TensorLoader, _cutout, _random_crop


def test_digits_are_real_and_split():
    train = load_images(DataConfig(dataset="digits"), "train")
    test = load_images(DataConfig(dataset="digits"), "test")
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert len(train) + len(test) == 1797 and train.num_classes == 10
    assert load_images(DataConfig(dataset="digits", image_size=16, limit=100), "train").images.shape == (100, 1, 16, 16)


def test_digits_are_cached_once_decoded(tmp_path, monkeypatch):
    """The second load reads the cache and does not import scikit-learn (seconds at every start); the same
    images, labels and classes. A corrupt cache file is rebuilt."""
    import sys

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path))
    first = {split: load_images(DataConfig(dataset="digits"), split) for split in ("train", "test")}
    files = sorted(p.name for p in (tmp_path / "decoded").iterdir())
    assert [name.split("-")[:2] for name in files] == [["digits", "test"], ["digits", "train"]]
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # importing it now raises ImportError
    for split, ds in first.items():
        again = load_images(DataConfig(dataset="digits"), split)
        assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
        assert again.classes == ds.classes and again.name == "digits"
    (tmp_path / "decoded" / files[1]).write_bytes(b"not a torch file")
    monkeypatch.delitem(sys.modules, "sklearn.datasets")
    rebuilt = load_images(DataConfig(dataset="digits"), "train")
    assert torch.equal(rebuilt.images, first["train"].images)


def test_random_crop_matches_padded_slices():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    offsets = torch.tensor([[0, 2], [1, 0]])  # (dy, dx) per image
    out = _random_crop(x, offsets, padding=1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 0:4, 1:5])
    assert torch.equal(out[1], padded[1, :, 2:6, 0:4])


def test_cutout_zeroes_a_clipped_square():
    x = torch.ones(1, 2, 8, 8)
    out = _cutout(x, torch.tensor([[0], [4]]), 4)  # centre (0, 4): rows 0..1, cols 2..5
    assert out[0, 0].sum() == 64 - 2 * 4
    assert out[0, :, :2, 2:6].abs().sum() == 0


def test_loader_is_deterministic_per_epoch_and_normalised():
    ds = load_images(DataConfig(dataset="digits", limit=64), "train")
    mean, std = ds.stats()
    loader = TensorLoader(ds, 16, mean=mean, std=std, device=torch.device("cpu"), augment=True, cutout=2, seed=5)
    a = [x for x, _ in loader.epoch(3)]
    b = [x for x, _ in loader.epoch(3)]
    c = [x for x, _ in loader.epoch(4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])
    plain = TensorLoader(ds, 64, mean=mean, std=std, device=torch.device("cpu"), shuffle=False)
    x, _ = next(plain.epoch(0))
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_together_read_the_one_process_batches(shuffle):
    """Under torchrun each rank reads its slice of every global batch: images, labels and augmentation
    concatenated over the ranks equal the one-process batches (so data.batch_size is the global batch)."""
    ds = load_images(DataConfig(dataset="digits", limit=71), "train")
    mean, std = ds.stats()
    common = dict(mean=mean, std=std, device=torch.device("cpu"), augment=True, cutout=2, seed=5, shuffle=shuffle)
    one = TensorLoader(ds, 16, drop_last=shuffle, **common)
    ranks = [TensorLoader(ds, 8, drop_last=shuffle, rank=r, world_size=2, **common) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for (x, y), *parts in zip(one.epoch(2), *(r.epoch(2) for r in ranks)):
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
    if shuffle:  # every rank takes the same number of equal steps
        assert [len(x) for x, _ in ranks[0].epoch(0)] == [len(x) for x, _ in ranks[1].epoch(0)] == [8] * 4


def test_split_is_disjoint_and_complete():
    a, b = split_indices(100, 0.5, seed=1)
    assert len(a) == len(b) == 50 and set(a.tolist()).isdisjoint(b.tolist())
    with pytest.raises(DataError):
        split_indices(1, 0.5, seed=1)


def make_tree(root, per_class=3, size=6):
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (40 * c + i, 0, 255 - i)).save(folder / f"{i}.jpg")


def test_imagefolder_tree_and_archive(tmp_path):
    make_tree(tmp_path / "tree")
    ds = load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "train")
    assert ds.images.shape == (6, 3, 6, 6) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    test = load_images(DataConfig(dataset="imagefolder", root=archive, image_size=4), "test")
    assert test.images.shape == (6, 3, 4, 4)


def test_an_archive_is_read_in_place_as_its_extracted_tree(tmp_path, monkeypatch):
    """A .tar.gz is read without extracting it: the same images, labels and classes as the tree it holds (its
    top, or one folder down; a val/ folder as the test split; an empty class folder refused), nothing written to the
    cache but the decoded tensors; a corrupt member is named inside its archive; no split folder is one error."""
    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=4)
    (tmp_path / "tree" / "test").rename(tmp_path / "tree" / "val")
    (tmp_path / "tree" / "train" / "cat" / "notes.txt").write_text("not an image")
    for arcname in ("tree", "."):
        archive = tmp_path / f"tree-{len(arcname)}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp_path / "tree", arcname=arcname)
        for split in ("train", "test"):
            tree = load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), split)
            packed = load_images(DataConfig(dataset="imagefolder", root=archive), split)
            assert torch.equal(packed.images, tree.images) and torch.equal(packed.labels, tree.labels)
            assert packed.classes == tree.classes
    assert tree.classes == ["cat", "dog"] and packed.classes == ["cat", "dog"]  # test: val/
    (tmp_path / "tree" / "train" / "empty").mkdir()  # a class no image teaches: refused in a tree and an archive
    with tarfile.open(tmp_path / "with-empty.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname=".")
    for root in (tmp_path / "tree", tmp_path / "with-empty.tar.gz"):
        with pytest.raises(DataError, match="class folder empty holds no images"):
            load_images(DataConfig(dataset="imagefolder", root=root), "train")
    (tmp_path / "tree" / "train" / "empty").rmdir()
    assert {p.parent.name for p in (tmp_path / "cache").rglob("*") if p.is_file()} == {"decoded"}
    (tmp_path / "tree" / "train" / "dog" / "2.jpg").write_bytes(b"not an image")
    broken = tmp_path / "broken.tar.gz"
    with tarfile.open(broken, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    with pytest.raises(DataError, match=r"1 of 8 image files cannot be decoded: .*broken\.tar\.gz:tree/train/dog/2\.jpg"):
        load_images(DataConfig(dataset="imagefolder", root=broken), "train")
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "train", arcname="images")
    with pytest.raises(DataError, match=r"bare\.tar\.gz has no 'train' folder"):
        load_images(DataConfig(dataset="imagefolder", root=bare), "train")


def test_missing_datasets_say_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="download=true"):
        load_images(DataConfig(dataset="cifar10", root=tmp_path / "nothing"), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "nope"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "empty"), "train")


def test_dry_run_data_check_names_a_file_given_as_the_data_root(tmp_path):
    """data.root naming a plain file: the run refuses it at once (torchvision's "not found", or "not a ... archive"
    for an ImageFolder dataset); the dry run's check, which reads no image, said nothing. A real archive passes."""
    from eldarts_cli.data.loaders import check_data

    text = tmp_path / "notes.txt"
    text.write_text("not data")
    with pytest.raises(DataError, match="cifar10 not found in"):
        check_data(DataConfig(dataset="cifar10", root=str(text)))
    with pytest.raises(DataError, match=r"cannot read .*notes.txt: it is not a .tar, .tar.gz"):
        check_data(DataConfig(dataset="imagefolder", root=str(text)))
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(text, arcname="train/a/notes.txt")
    check_data(DataConfig(dataset="imagefolder", root=str(archive)))


@pytest.mark.parametrize("dataset, files", [
    ("cifar10", ["cifar-10-batches-py/" + n for n in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                                       "data_batch_5", "test_batch", "batches.meta")]),
    ("cifar100", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
    ("svhn", ["train_32x32.mat", "test_32x32.mat"]),
    ("mnist", ["MNIST/raw/" + n for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]),
    ("mnist", ["MNIST/processed/training.pt", "MNIST/processed/test.pt"]),  # (torchvision's older layout)
    ("fashion_mnist", ["FashionMNIST/processed/training.pt", "FashionMNIST/processed/test.pt"]),
])
def test_dry_run_data_check_names_a_folder_without_the_datasets_files(tmp_path, dataset, files):
    """A data.root folder of other files passed the dry run's check and the run then refused it; the check now
    looks for the files torchvision reads, by name (unread), names those missing, and passes a folder that has
    them all (a folder with the training file alone was read whole before it was refused)."""
    from eldarts_cli.data.loaders import check_data

    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(DataError, match=f"{dataset} not found in {tmp_path} \\(no "):
        check_data(DataConfig(dataset=dataset, root=str(tmp_path)))
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    check_data(DataConfig(dataset=dataset, root=str(tmp_path)))  # named right: only loading can tell more
    (tmp_path / files[-1]).unlink()
    # named: the file gone, or with torchvision's older processed files incomplete, the raw files it reads instead
    gone = files[-1] if "/processed/" not in files[-1] else files[-1].split("/")[0] + "/raw/"
    with pytest.raises(DataError, match=f"{dataset} not found in {tmp_path} \\(no {gone}"):
        check_data(DataConfig(dataset=dataset, root=str(tmp_path)))


def test_digits_are_not_mirrored_unless_asked():
    """data.augment flipped every dataset's images at random, digits too (a mirrored digit is no digit); the flip
    is now off by default for digits, MNIST and SVHN, on for the rest, and data.flip sets it either way."""
    from eldarts_cli.data.datasets import ImageSet

    assert not DataConfig(dataset="digits").flips and not DataConfig(dataset="mnist").flips
    assert not DataConfig(dataset="svhn").flips and DataConfig(dataset="fashion_mnist").flips
    assert DataConfig(dataset="cifar10").flips and DataConfig(dataset="digits", flip=True).flips
    assert not DataConfig(dataset="cifar10", flip=False).flips and not DataConfig(dataset="cifar10", augment=False).flips
    images = torch.arange(64 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).view(64, 1, 8, 8)
    data = ImageSet(images, torch.zeros(64, dtype=torch.long), ["0"], "test")
    plain = images.float() / 255
    for flip in (False, True):
        loader = TensorLoader(data, 64, mean=[0.0], std=[1.0], device=torch.device("cpu"), shuffle=False, augment=True,
                              flip=flip, crop_padding=0)
        x, _ = next(iter(loader.epoch(0)))
        mirrored = [torch.equal(row, p.flip(2)) for row, p in zip(x, plain)]
        assert any(mirrored) == flip and all(m or torch.equal(row, p) for m, row, p in zip(mirrored, x, plain))


def test_loader_workers_are_at_most_one_per_cpu(monkeypatch):
    """eval-imagenet.yaml's 8 loader workers on a 2-core machine: PyTorch printed its long warning once per loader
    (twice a run); eldarts now uses one worker per CPU it may use, and says so in one line."""
    import os

    from eldarts_cli.data import loaders

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.warns(UserWarning, match=r"^data.num_workers=8 is more than the 2 CPUs this process may use: 2 "):
        assert loaders.loader_workers(8) == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loaders.loader_workers(2) == 2 and loaders.loader_workers(0) == 0


def test_a_limit_above_the_splits_size_is_named():
    """``data.limit`` larger than the split was silently the whole split; it is said (once per split asked)."""
    size = len(load_images(DataConfig(dataset="digits"), "train"))
    with pytest.warns(UserWarning, match=rf"data.limit=100000 is more than the {size} images of the train split: "
                                         rf"all {size} are used"):
        assert len(load_images(DataConfig(dataset="digits", limit=100000), "train")) == size
    with pytest.warns(UserWarning, match="data.test_limit=100000 is more than"):
        load_images(DataConfig(dataset="digits", test_limit=100000), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_images(DataConfig(dataset="digits", limit=100), "train")


def test_an_edited_tree_is_decoded_again(tmp_path, monkeypatch):
    """The decoded cache of a folder was keyed by its path alone: images removed, added or changed after a first
    run were not seen by the next (it trained and tested on the cached ones)."""
    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=4)
    cfg = DataConfig(dataset="imagefolder", root=tmp_path / "tree")
    assert len(load_images(cfg, "train")) == 8
    (tmp_path / "tree" / "train" / "cat" / "0.jpg").unlink()
    assert len(load_images(cfg, "train")) == 7
    Image.new("RGB", (6, 6), (1, 2, 3)).save(tmp_path / "tree" / "train" / "dog" / "9.jpg")
    again = load_images(cfg, "train")
    assert len(again) == 8 and again.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert len(load_images(cfg, "train")) == 8  # unchanged: from the cache


def test_one_class_with_images_and_an_empty_one_is_refused(tmp_path, monkeypatch):
    """A tree of one class with images and an empty class folder trained and reported 0.00% test error."""
    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree")
    for split in ("train", "test"):
        for image in (tmp_path / "tree" / split / "dog").iterdir():
            image.unlink()
    with pytest.raises(DataError, match="class folder dog holds no images"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "test")


def test_an_archives_shape_is_read_without_decoding_it(tmp_path, monkeypatch):
    """A dry run sized an ImageFolder .tar.gz as the dataset's defaults (3x32x32, 10 classes) where the run trains
    the archive's images and classes; it now reads its class folders and first image, as for a folder."""
    from eldarts_cli.data.datasets import expected_shape

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", size=6)
    (tmp_path / "tree" / "train" / "emu").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "tree" / "train" / "emu" / "0.jpg")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    shape = expected_shape(DataConfig(dataset="imagefolder", root=archive))
    assert (shape.channels, shape.size, shape.num_classes) == (3, 6, 3)
    assert expected_shape(DataConfig(dataset="imagefolder", root=tmp_path / "tree")) == shape
    assert not (tmp_path / "cache").exists()  # nothing decoded or cached


def test_a_failed_download_names_the_dataset(tmp_path, monkeypatch):
    """Offline, data.download: true ended in "cannot use: <urlopen error [Errno -2] Name or service not known>"."""
    import urllib.error

    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(tvd.CIFAR10, "__init__", offline)
    with pytest.raises(DataError, match=rf"cannot download cifar10 into {tmp_path / 'c10'} \(data.download: true\): "
                                        r".*Name or service not known.*set data.download: false"):
        load_images(DataConfig(dataset="cifar10", root=tmp_path / "c10", download=True), "train")


def test_a_damaged_archive_is_refused_not_read_in_part(tmp_path, monkeypatch):
    """Python's tarfile ends its walk without a word at a bad or missing header after the first, and a .tar.gz read
    so never reaches the gzip checksum: one flipped bit loaded the train split with a whole class gone (exit 0,
    cached). The walk's end is checked, and a compressed archive read to its end (its checksum)."""
    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=4)
    packed = tmp_path / "tree.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x10
    (tmp_path / "flipped.tar.gz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cannot read .*flipped\.tar\.gz: "):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "flipped.tar.gz"), "train")
    plain = tmp_path / "tree.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    with tarfile.open(plain) as tar:
        members = tar.getmembers()
    cut_at = members[len(members) // 2].offset  # a header boundary: the walk met no header, and stopped
    (tmp_path / "cut.tar").write_bytes(plain.read_bytes()[:cut_at])
    with pytest.raises(DataError, match=r"cut\.tar: the archive ends early"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "cut.tar"), "train")
    bad = bytearray(plain.read_bytes())
    bad[cut_at] ^= 0x01  # the first byte of that member's name: its header's checksum no longer holds
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=rf"bad\.tar: it is damaged: a bad header at byte {cut_at}"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "bad.tar"), "train")
    assert not list((tmp_path / "cache").rglob("*.pt"))  # nothing cached of any
    assert len(load_images(DataConfig(dataset="imagefolder", root=plain), "train")) == 8


def test_images_are_found_as_torchvision_finds_them(tmp_path, monkeypatch):
    """Images in folders inside a class folder, and .tif/.pgm files, were dropped without a word (the streamed path,
    torchvision's ImageFolder, read them: the two saw different data); an archive dropped hard links. They are read
    now, in a tree and an archive alike; macOS's ._x.jpg files (not images) are passed over, not refused as corrupt;
    other files are left out with a warning that counts them."""
    import os

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=2)
    cat = tmp_path / "tree" / "train" / "cat"
    (cat / "more").mkdir()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(cat / "more" / "deep.png")
    Image.new("RGB", (6, 6), (4, 5, 6)).save(cat / "scan.tif")
    Image.new("L", (6, 6), 7).save(cat / "grey.pgm")
    os.link(cat / "0.jpg", tmp_path / "tree" / "train" / "dog" / "same.jpg")  # an archive stores it as a hard link
    (cat / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (cat / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"1 file in class folders left out, not images eldarts reads \(\.txt; .*notes"):
        tree = load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "train")
    assert len(tree) == 8 and tree.labels.tolist() == [0] * 5 + [1] * 3
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    with tarfile.open(archive) as tar:
        assert any(member.islnk() for member in tar.getmembers())
    with tarfile.open(archive, "a") as tar:  # a link to a member the archive lacks: left out, not a traceback
        dangling = tarfile.TarInfo("tree/train/dog/dangling.png")
        dangling.type, dangling.linkname = tarfile.SYMTYPE, "nowhere.png"
        tar.addfile(dangling)
    with pytest.warns(UserWarning, match=r"2 files in class folders left out.*notes.txt"):
        packed = load_images(DataConfig(dataset="imagefolder", root=archive), "train")
    assert torch.equal(packed.images, tree.images) and torch.equal(packed.labels, tree.labels)


def test_hidden_folders_are_no_classes_and_hold_no_images(tmp_path, monkeypatch):
    """A hidden folder (``.ipynb_checkpoints``) beside the class folders was a class of its own, and one inside a
    class folder gave that class its images, without a word; the streamed path (torchvision's ImageFolder, given
    the whole path) also read macOS's hidden ``._x.jpg`` files. Hidden folders are passed over as hidden files are:
    in a tree, an archive, the dry run's sizing and the streamed path."""
    from pathlib import Path

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.data.datasets import expected_shape
    from eldarts_cli.data.loaders import training_loaders

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    make_tree(tree, per_class=2)
    for split in ("train", "test"):
        (tree / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (6, 6), (1, 2, 3)).save(tree / split / ".ipynb_checkpoints" / "0-checkpoint.jpg")
    (tree / "train" / "dog" / ".thumbs").mkdir()
    for i in range(3):
        Image.new("RGB", (6, 6), (9, 9, 9)).save(tree / "train" / "dog" / ".thumbs" / f"{i}.jpg")
    (tree / "train" / "cat" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = load_images(DataConfig(dataset="imagefolder", root=tree), "train")
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert expected_shape(DataConfig(dataset="imagefolder", root=tree)).num_classes == 2
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="tree")
    packed = load_images(DataConfig(dataset="imagefolder", root=archive), "train")
    assert packed.classes == ["cat", "dog"] and torch.equal(packed.images, ds.images)
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/eval-imagenet.yaml", EvalRecipe,
                         [f"data.root={tree}", "data.image_size=8", "data.num_workers=0"])
    train, test, _ = training_loaders(recipe.data, batch=2, eval_batch=2, seed=0, device=torch.device("cpu"),
                                      channels_last=False)
    for loader, count in ((train, 4), (test, 4)):
        folder = loader.dataset.dataset  # (_Checked around the ImageFolder)
        assert folder.classes == ["cat", "dog"] and len(folder.samples) == count, folder.samples
        assert all("/." not in path for path, _ in folder.samples)


def test_images_outside_the_class_folders_are_said_to_be_left_out(tmp_path, monkeypatch):
    """An image in train/ itself (no class folder) was left out without a word, in a tree, an archive and the
    streamed path, where other files that are not images were counted in a warning."""
    from pathlib import Path

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.data.loaders import training_loaders

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    make_tree(tree, per_class=2)
    for name in ("loose.png", "x.jpg"):
        Image.new("RGB", (6, 6), (1, 2, 3)).save(tree / "train" / name)
    said = r"train: 2 images outside the class folders left out \(images go in train/<class>/\): e\.g\. loose\.png"
    with pytest.warns(UserWarning, match=said):
        assert len(load_images(DataConfig(dataset="imagefolder", root=tree), "train")) == 4
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="tree")
    with pytest.warns(UserWarning, match=r"tree\.tar:tree/train: 2 images outside the class folders left out"):
        assert len(load_images(DataConfig(dataset="imagefolder", root=archive), "train")) == 4
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/eval-imagenet.yaml", EvalRecipe,
                         [f"data.root={tree}", "data.image_size=8", "data.num_workers=0"])
    with pytest.warns(UserWarning, match=said):
        training_loaders(recipe.data, batch=2, eval_batch=2, seed=0, device=torch.device("cpu"), channels_last=False)


def test_sixteen_bit_greyscale_is_scaled_not_clipped_white(tmp_path, monkeypatch):
    """Pillow's convert("RGB") clips a 16-bit PNG's values at 255: both classes of a 16-bit tree loaded all white
    (255), and the run blamed its learning rate."""
    import numpy as np

    from eldarts_cli.data.datasets import open_rgb

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for name, value in (("dark", 10000), ("light", 50000)):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((6, 6), value, dtype=np.uint16)).save(tmp_path / "tree" / split / name / f"{i}.png")
    ds = load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "train")
    assert ds.images[ds.labels == 0].unique().tolist() == [39] and ds.images[ds.labels == 1].unique().tolist() == [195]
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(tmp_path / "eight.png")  # 8-bit data, 16-bit file
    assert np.asarray(open_rgb(tmp_path / "eight.png")).max() == 200
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="floating-point image"):
        open_rgb(tmp_path / "float.tif")


def test_a_palette_image_with_transparency_reads_its_colours_without_pillows_warning():
    """Pillow warned "Palette images with Transparency expressed in bytes should be converted to RGBA images",
    naming no file, for each such PNG; the colours are the same."""
    import io
    import warnings

    import numpy as np

    from eldarts_cli.data.datasets import open_rgb

    image = Image.new("P", (4, 4))
    image.putpalette([i % 256 for i in range(768)])
    image.putdata([0, 1, 2, 3] * 4)
    png = io.BytesIO()
    image.save(png, "PNG", transparency=bytes([0, 255, 128] + [255] * 253))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        colours = np.asarray(open_rgb(io.BytesIO(png.getvalue())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (colours == np.asarray(Image.open(io.BytesIO(png.getvalue())).convert("RGB"))).all()


def test_a_broken_link_is_a_bad_image_named_not_a_fault(tmp_path, monkeypatch):
    """A link to a missing file in a class folder stopped the run with exit 1 ("cannot use ... No such file") before
    decoding, and data.skip_bad_images could not skip it."""
    import os

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "tree" / "train" / "cat" / "link.jpg")
    with pytest.raises(DataError, match=r"1 of 7 image files cannot be decoded: .*link\.jpg"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "train")
    with pytest.warns(UserWarning, match="skipped 1 of 7"):
        assert len(load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree", skip_bad_images=True),
                               "train")) == 6


def test_the_cache_folder_setting_expands_home_and_ignores_an_empty_value(monkeypatch, tmp_path):
    """ELDARTS_CACHE='' wrote the decoded images into the current folder, and '~/x' into a folder named '~' there."""
    from pathlib import Path

    from eldarts_cli.data.datasets import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ELDARTS_CACHE", "")
    assert cache_dir() == tmp_path / ".cache" / "eldarts"
    monkeypatch.setenv("ELDARTS_CACHE", "~/x")
    assert cache_dir() == tmp_path / "x" and Path("~") not in cache_dir().parents


def test_a_streamed_limit_is_a_random_subset_of_every_class(tmp_path):
    """data.limit / data.test_limit of a streamed (ImageNet-style) tree took its first files: the first classes
    alone (a test split of one class: 0.00% error). A fixed random subset now, as the in-memory path takes."""
    import torch as _torch

    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.data.loaders import training_loaders
    from pathlib import Path

    for split in ("train", "val"):
        for label in ("a", "b", "c"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / split / label / f"{i}.png")
    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes/eval-imagenet.yaml", EvalRecipe,
                         [f"data.root={tmp_path}", "data.image_size=8", "data.limit=9", "data.test_limit=9",
                          "data.num_workers=0"])
    train, test, _ = training_loaders(recipe.data, batch=3, eval_batch=3, seed=0, device=_torch.device("cpu"),
                                      channels_last=False)
    for loader in (train, test):
        subset = loader.dataset.dataset  # (_Checked around the Subset)
        targets = [subset.dataset.targets[i] for i in subset.indices]
        assert len(targets) == 9 and set(targets) == {0, 1, 2}, targets


def test_the_dry_runs_sizing_refuses_and_reads_what_the_run_does(tmp_path, monkeypatch):
    """Where a dry run (expected_shape, check_data) and the run disagreed: images not square (the run trained on
    24x12 and recorded 24x24 and its MACs; at 32x2 a traceback), an empty class folder (the dry run sized 3
    classes), a data.root with ~ (the dry run sized a default 10-class network), an image past Pillow's size limit
    (a traceback), and a search of a tree without test/ (refused by its dry run; the search reads train/ alone)."""
    from PIL import Image as PILImage

    from eldarts_cli.data.datasets import expected_shape
    from eldarts_cli.data.loaders import check_data

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    make_tree(tmp_path / "tree", per_class=2)
    assert expected_shape(DataConfig(dataset="imagefolder", root="~/tree")) .num_classes == 2
    assert expected_shape(DataConfig(dataset="imagefolder", root="~/tree")).size == 6
    (tmp_path / "tree" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="class folder empty holds no images"):
        expected_shape(DataConfig(dataset="imagefolder", root=tmp_path / "tree"))
    (tmp_path / "tree" / "train" / "empty").rmdir()
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            PILImage.new("RGB", (24, 12)).save(tmp_path / "tree" / split / name / "0.jpg")
    for sizing in (lambda cfg: expected_shape(cfg), lambda cfg: load_images(cfg, "train")):
        with pytest.raises(DataError, match=r"0\.jpg is 24x12, not square: set data\.image_size"):
            sizing(DataConfig(dataset="imagefolder", root=tmp_path / "tree"))
    assert load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree", image_size=8), "train").size == 8
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10)  # every image past the limit
    with pytest.raises(DataError, match="cannot be decoded"):  # (image_size 7: not the cached 8)
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree", image_size=7), "train")
    assert expected_shape(DataConfig(dataset="imagefolder", root=tmp_path / "tree")).size == 32  # unread: no traceback
    monkeypatch.undo()
    make_tree(tmp_path / "only-train", per_class=2)
    import shutil

    shutil.rmtree(tmp_path / "only-train" / "test")
    check_data(DataConfig(dataset="imagefolder", root=tmp_path / "only-train"), splits=("train",))
    with pytest.raises(DataError, match="has no 'test' or 'val' folder"):
        check_data(DataConfig(dataset="imagefolder", root=tmp_path / "only-train"))


def test_a_file_that_is_no_archive_is_one_warning_in_a_dry_run_and_a_streamed_file_is_named(tmp_path):
    """A .zip as data.root: the dry run warned, then stopped with the same words as an error; a streamed dataset
    given a file said it "does not exist or is not a folder"."""
    from eldarts_cli.data.datasets import expected_shape
    from eldarts_cli.data.loaders import check_data

    (tmp_path / "d.zip").write_bytes(b"PK\x03\x04")
    cfg = DataConfig(dataset="imagefolder", root=tmp_path / "d.zip")
    with pytest.warns(UserWarning, match="it is not a .tar"):
        check_data(cfg, planning=True)
    assert expected_shape(cfg).num_classes == 10  # (sized by default: the warning said the run would refuse it)
    with pytest.raises(DataError, match=r"d\.zip is a file: dataset imagenet is streamed from an extracted"):
        check_data(DataConfig(dataset="imagenet", root=tmp_path / "d.zip"))


def test_a_link_to_a_folder_above_is_walked_once(tmp_path, monkeypatch):
    """Images are found at any depth with links followed (as torchvision finds them); a link inside a class folder
    to a folder above it must not be walked round and round."""
    import os

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=2)
    os.symlink(".", tmp_path / "tree" / "train" / "dog" / "self")  # a folder linked to itself: walked once
    os.symlink(tmp_path / "tree" / "train", tmp_path / "tree" / "train" / "cat" / "loop")
    ds = load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "train")
    # it ends; dog's 2 images, reached from cat through the link, count under cat too (as the link puts them)
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_a_cache_of_an_earlier_reading_of_an_archive_is_not_served(tmp_path, monkeypatch):
    """An archive's decoded copy is keyed by its path, size and time: one cached by an eldarts that read less of it
    (no images in nested folders, no hard links) was served for the same archive. The key holds the format."""
    import eldarts_cli.data.datasets as datasets

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=2)
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "DECODED_FORMAT", 1)
        load_images(DataConfig(dataset="imagefolder", root=archive), "train")
    load_images(DataConfig(dataset="imagefolder", root=archive), "train")
    assert len(list((tmp_path / "cache" / "decoded").glob("tree-train-*.pt"))) == 2
