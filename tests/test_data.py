"""hos_keras.data: IDX reading, tfds pipelines on mock data, missing-data messages."""

import gzip
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from hos_keras import data
from hos_keras.errors import (
    DatasetNotFoundError,
    InvalidArgumentError,
    UnknownNameError,
)

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(directory, n_train=10, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(os.path.join(directory, FILES[split][0]), images, 2051)
        _write_idx(os.path.join(directory, FILES[split][1]), labels, 2049)
        arrays[split] = (images, labels)
    return arrays


def test_idx_files_are_read_exactly(tmp_path):
    arrays = _fake_fashion_mnist(tmp_path)
    (x, y), (xt, yt) = data.fashion_mnist_arrays(str(tmp_path))
    np.testing.assert_array_equal(x, arrays["train"][0])
    np.testing.assert_array_equal(y, arrays["train"][1])
    np.testing.assert_array_equal(xt, arrays["test"][0])
    np.testing.assert_array_equal(yt, arrays["test"][1])


def test_debian_package_copy_is_found():
    # run.sh installs Debian's dataset-fashion-mnist before the tests.
    assert os.path.isdir(data.FASHION_MNIST_DIR), (
        "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist"
    )
    (x, y), (xt, yt) = data.fashion_mnist_arrays()
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    # The first training labels of Fashion-MNIST, and every class equally often.
    assert list(y[:10]) == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert np.bincount(y).tolist() == [6000] * 10
    assert np.bincount(yt).tolist() == [1000] * 10


def test_environment_variable_and_search_order(tmp_path, monkeypatch):
    arrays = _fake_fashion_mnist(tmp_path, seed=3)
    monkeypatch.setenv("HOS_KERAS_FASHION_MNIST", str(tmp_path))
    (x, _), _ = data.fashion_mnist_arrays()
    np.testing.assert_array_equal(x, arrays["train"][0])


def test_corrupt_idx_files(tmp_path):
    _fake_fashion_mnist(tmp_path)
    path = tmp_path / FILES["train"][0]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DatasetNotFoundError, match="truncated or corrupt"):
        data.fashion_mnist_arrays(str(tmp_path))
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    with pytest.raises(DatasetNotFoundError, match="magic number 2051"):
        data.fashion_mnist_arrays(str(tmp_path))
    path.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(DatasetNotFoundError, match="not a readable gzip file"):
        data.fashion_mnist_arrays(str(tmp_path))
    _fake_fashion_mnist(tmp_path)
    labels = np.zeros(3, np.uint8)
    _write_idx(tmp_path / FILES["test"][1], labels, 2049)
    with pytest.raises(DatasetNotFoundError, match="6 images but .* 3 labels"):
        data.fashion_mnist_arrays(str(tmp_path))


def test_fallback_download_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv("HOS_KERAS_FASHION_MNIST", raising=False)
    small = ((np.ones((2, 28, 28), np.uint8), np.arange(2)),) * 2
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: small)
    (x, _), _ = data.fashion_mnist_arrays()
    assert x.shape == (2, 28, 28)

    def offline():
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        data.fashion_mnist_arrays()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "HOS_KERAS_FASHION_MNIST" in message
    assert "download fallback failed" in message and "Name or service" in message
    with pytest.raises(DatasetNotFoundError, match="not found in"):
        data.fashion_mnist_arrays(str(tmp_path / "absent"))


def test_fashion_mnist_pipeline_standardizes_and_augments(tmp_path):
    arrays = _fake_fashion_mnist(tmp_path, n_train=10, n_test=6)
    test = data.fashion_mnist("test", data_dir=str(tmp_path), batch_size=4)
    batches = list(test)
    assert [b[0].shape[0] for b in batches] == [4, 2]  # no drop for evaluation
    x = np.concatenate([b[0].numpy() for b in batches])
    expected = (arrays["test"][0][..., None] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        np.concatenate([b[1].numpy() for b in batches]), arrays["test"][1]
    )

    train = data.fashion_mnist(
        "train", data_dir=str(tmp_path), batch_size=4, shuffle=False, seed=1
    )
    augmented = np.concatenate([b[0].numpy() for b in train])
    assert augmented.shape == (8, 28, 28, 1)  # drop_remainder for training
    originals = (arrays["train"][0][..., None] / 255.0 - 0.2860) / 0.3530
    for image, original in zip(augmented, originals, strict=False):
        padded = np.pad(original, [(2, 2), (2, 2), (0, 0)])
        crops = [
            c
            for i in range(5)
            for j in range(5)
            for c in (
                padded[i : i + 28, j : j + 28],
                padded[i : i + 28, j : j + 28][:, ::-1],
            )
        ]
        assert min(np.max(np.abs(image - c)) for c in crops) < 1e-5

    limited = data.fashion_mnist("test", data_dir=str(tmp_path), limit=3)
    assert sum(b[0].shape[0] for b in limited) == 3
    # The arrays ready for the models are the pipeline's images.
    (xs, ys), (xst, _) = data.fashion_mnist_arrays(str(tmp_path), standardize=True)
    assert xs.dtype == np.float32 and xs.shape == (10, 28, 28, 1)
    np.testing.assert_allclose(xst, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ys, arrays["train"][1])


def test_cifar_on_mock_data_standardizes_and_augments():
    with tfds.testing.mock_data(num_examples=6):
        raw = np.stack(
            [
                x.numpy()
                for x, _ in tfds.load("cifar10", split="test", as_supervised=True)
            ]
        )
        test = data.cifar10(
            "test", data_dir="/nonexistent/tfds", batch_size=4, download=True
        )
        x = np.concatenate([b[0].numpy() for b in test])
        train = data.cifar100("train", batch_size=2, shuffle=False, download=True)
        batch, labels = next(iter(train))
        limited = data.cifar10("test", batch_size=2, download=True, limit=3)
        assert [int(b[0].shape[0]) for b in limited] == [2, 1]
    mean = np.array([0.4914, 0.4822, 0.4465])
    std = np.array([0.2470, 0.2435, 0.2616])
    np.testing.assert_allclose(x, (raw / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    assert batch.shape == (2, 32, 32, 3) and labels.dtype == "int64"
    assert int(labels.numpy().max()) < 100


def test_imagenet_on_mock_data():
    with tfds.testing.mock_data(num_examples=5):
        train = data.imagenet(
            "train", data_dir="/nonexistent", batch_size=2, image_size=48
        )
        val = data.load("imagenet2012", "test", batch_size=2, image_size=48)
        x, y = next(iter(train))
        sizes = [b[0].shape for b in val]
    assert x.shape == (2, 48, 48, 3) and y.dtype == "int64"
    assert -1.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
    assert sizes == [(2, 48, 48, 3), (2, 48, 48, 3), (1, 48, 48, 3)]


def test_missing_tfds_data_says_how_to_get_it(tmp_path, monkeypatch):
    def offline(self, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    absent = tmp_path / "absent" / "tfds"
    # By default nothing is downloaded: the error comes at once, and no
    # directory is made.
    with pytest.raises(DatasetNotFoundError) as info:
        data.cifar10(data_dir=str(absent))
    assert str(absent) in str(info.value) and "download=False" in str(info.value)
    assert "download_and_prepare" in str(info.value)
    assert not (tmp_path / "absent").exists()
    with pytest.raises(DatasetNotFoundError, match="Failed to resolve"):
        data.cifar100(data_dir=str(absent), download=True)
    assert not absent.exists()  # the failed download left nothing behind
    with pytest.raises(DatasetNotFoundError, match="Failed to resolve"):
        data.cifar100(data_dir=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError) as info:
        data.imagenet(data_dir=str(tmp_path), manual_dir=str(tmp_path / "tars"))
    assert "ILSVRC2012_img_train.tar" in str(info.value)
    assert "manual_dir" in str(info.value)
    assert not os.path.exists(tmp_path / "cifar100" / "3.0.2" / "dataset_info.json")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_bad_names_and_arguments():
    with pytest.raises(UnknownNameError) as info:
        data.load("cifar1")
    assert "cifar10" in str(info.value) and "fashion_mnist" in str(info.value)
    assert "Did you mean 'cifar10'" in str(info.value)
    with pytest.raises(UnknownNameError):
        data.dataset_info("mnist_fashion")
    with pytest.raises(InvalidArgumentError, match="split='val'"):
        data.fashion_mnist("val")
    with pytest.raises(InvalidArgumentError, match="batch_size=0"):
        data.cifar10(batch_size=0)
    with pytest.raises(InvalidArgumentError, match="image_size=4"):
        data.imagenet(image_size=4)
    assert data.dataset_info("imagenet2012", image_size=96)["input_shape"] == (
        96,
        96,
        3,
    )
    assert data.dataset_info("cifar100")["num_classes"] == 100
