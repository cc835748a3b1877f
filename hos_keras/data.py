"""Input pipelines for the datasets of the paper's experiments, and Fashion-MNIST.

CIFAR-10, CIFAR-100 and ImageNet (ILSVRC 2012) come from tensorflow-datasets
(`data_dir=` chooses where they live; ImageNet needs its archives in a manual
download directory). Fashion-MNIST is read from its IDX `.gz` files: those that
Debian's package `dataset-fashion-mnist` installs under
`/usr/share/datasets/fashion-mnist`, a directory given by argument or by the
`HOS_KERAS_FASHION_MNIST` environment variable, or else the copy
`keras.datasets.fashion_mnist` downloads.

Every loader returns a batched, prefetched `tf.data.Dataset` of
`(float32 image, int64 label)` with the usual training augmentation: pad 4, random
32x32 crop and horizontal flip for CIFAR; random resized crop and flip for
ImageNet; pad 2, random crop and flip for Fashion-MNIST.
"""

from __future__ import annotations

import difflib
import gzip
import logging
import os
import shutil
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from hos_keras.errors import (
    DatasetNotFoundError,
    InvalidArgumentError,
    UnknownNameError,
    check_int,
)

__all__ = [
    "FASHION_MNIST_DIR",
    "cifar10",
    "cifar100",
    "dataset_info",
    "dataset_names",
    "fashion_mnist",
    "fashion_mnist_arrays",
    "imagenet",
    "load",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_ENV = "HOS_KERAS_FASHION_MNIST"
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Per-channel mean and standard deviation of the training images (in [0, 1]).
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))

_INFO = {
    "cifar10": {"num_classes": 10, "input_shape": (32, 32, 3)},
    "cifar100": {"num_classes": 100, "input_shape": (32, 32, 3)},
    "imagenet2012": {"num_classes": 1000, "input_shape": (224, 224, 3)},
    "fashion_mnist": {"num_classes": 10, "input_shape": (28, 28, 1)},
}


def dataset_names() -> list[str]:
    """Names `load` accepts."""
    return sorted(_INFO)


def _check_name(name: str) -> str:
    if name not in _INFO:
        close = difflib.get_close_matches(str(name), _INFO, n=2)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"Unknown dataset {name!r}; known datasets are {dataset_names()}.{hint}"
        )
    return name


def dataset_info(name: str, image_size: int = 224) -> dict:
    """Number of classes and input shape of a dataset.

    Args:
        name: One of `dataset_names()`.
        image_size: Side of the ImageNet crops. Defaults to `224`.

    Returns:
        `{"num_classes": int, "input_shape": (height, width, channels)}`.

    Raises:
        UnknownNameError: for an unknown name (the known ones are listed).
    """
    info = dict(_INFO[_check_name(name)])
    if name == "imagenet2012":
        info["input_shape"] = (image_size, image_size, 3)
    return info


def _check_split(split: str, allowed: tuple[str, ...]) -> str:
    if split not in allowed:
        raise InvalidArgumentError(
            f"Received split={split!r}; pass one of {list(allowed)}."
        )
    return split


# ----------------------------------------------------------------- augmentation


def _pad_crop_flip(pad: int) -> Callable:
    def augment(image, label):
        height, width, channels = image.shape
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.random_crop(padded, [height, width, channels])
        return tf.image.random_flip_left_right(image), label

    return augment


def _standardize(mean, std) -> Callable:
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)

    def standardize(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        return (image - mean) / std, tf.cast(label, tf.int64)

    return standardize


def _pipeline(
    ds: tf.data.Dataset,
    *,
    size: int | None,
    batch_size: int,
    training: bool,
    augment: bool,
    shuffle: bool,
    seed: int | None,
    normalize: Callable,
    augmentation: Callable | None,
    cache: bool,
) -> tf.data.Dataset:
    """Normalize (cached), shuffle, augment, batch and prefetch."""
    ds = ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(size or 10_000, 50_000), seed=seed)
    if augment and augmentation is not None:
        ds = ds.map(augmentation, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------- tfds datasets


def _tfds_missing(name: str, data_dir, cause: str, manual_dir=None) -> str:
    where = data_dir or "~/tensorflow_datasets (the tfds default)"
    if name == "imagenet2012":
        return (
            f"ImageNet (imagenet2012) is not prepared in {where} ({cause}). Put "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
            "https://image-net.org/download-images, registration needed) in a "
            f"directory and pass it as manual_dir= (now {manual_dir!r}); the first "
            "call prepares the dataset under data_dir."
        )
    return (
        f"Dataset {name!r} is not in {where} and could not be downloaded ({cause}). "
        'On a machine with internet access run `python -c "import '
        f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')."
        "download_and_prepare()\"`, copy DIR here and pass data_dir='DIR'."
    )


class _NoVariantNotice(logging.Filter):
    """Drops tfds's notice about an unprepared dataset's folder: the error that
    follows says what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


def _tfds_split(name, split, data_dir, download, manual_dir):
    import tensorflow_datasets as tfds

    notice = _NoVariantNotice()
    logging.getLogger("absl").addFilter(notice)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    finally:
        logging.getLogger("absl").removeFilter(notice)
    if not prepared:
        if not download:
            raise DatasetNotFoundError(
                _tfds_missing(name, data_dir, "download=False", manual_dir)
            )
        config = None
        if manual_dir is not None:
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        root = os.path.expanduser(data_dir or "~/tensorflow_datasets")
        made = [p for p in (root, os.path.join(root, name)) if not os.path.exists(p)]
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # network, manual files, disk: one clear message
            for path in made[:1]:  # leave no directory behind that was not there
                shutil.rmtree(path, ignore_errors=True)
            cause = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
            raise DatasetNotFoundError(
                _tfds_missing(name, data_dir, cause, manual_dir)
            ) from error
    size = None
    try:
        size = builder.info.splits[split].num_examples
    except (KeyError, TypeError):
        pass
    return builder.as_dataset(split=split, as_supervised=True), size


def _cifar(
    name,
    split,
    data_dir,
    batch_size,
    augment,
    shuffle,
    seed,
    download,
    limit,
):
    split = _check_split(split, ("train", "test"))
    batch_size = check_int("batch_size", batch_size)
    training = split == "train"
    ds, size = _tfds_split(name, split, data_dir, download, None)
    if limit is not None:
        # Before the cache: a dataset read in part would warn at every epoch.
        limit = check_int("limit", limit, hint=" or None")
        ds, size = ds.take(limit), min(size or limit, limit)
    mean, std = _CIFAR_STATS[name]
    return _pipeline(
        ds,
        size=size,
        batch_size=batch_size,
        training=training,
        augment=training if augment is None else augment,
        shuffle=training if shuffle is None else shuffle,
        seed=seed,
        normalize=_standardize(mean, std),
        augmentation=_pad_crop_flip(4),
        cache=True,
    )


def cifar10(
    split: str = "train",
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int | None = 0,
    download: bool = False,
    limit: int | None = None,
) -> tf.data.Dataset:
    """CIFAR-10 through tensorflow-datasets, standardized per channel.

    Args:
        split: `"train"` or `"test"`. Defaults to `"train"`.
        data_dir: Where tensorflow-datasets keeps its data. Defaults to `None`
            (`~/tensorflow_datasets`).
        batch_size: Batch size. Defaults to `128`.
        augment: Pad 4 + random 32x32 crop + horizontal flip. Defaults to `None`:
            on for the training split.
        shuffle: Defaults to `None`: on for the training split.
        seed: Shuffle seed. Defaults to `0`.
        download: Download and prepare the data when it is not in `data_dir`
            (network access). Defaults to `False`: data that is not prepared
            raises at once, saying how to get it.
        limit: Use only the first `limit` examples (quick runs). Defaults to
            `None` (all).

    Returns:
        A batched `tf.data.Dataset` of `(float32 [b, 32, 32, 3], int64 [b])`;
        the training split drops its last partial batch.

    Raises:
        DatasetNotFoundError: if the data is missing and cannot be downloaded
            (the message says how to get it).
        InvalidArgumentError: for an unknown split or a bad batch size.

    Example:

    ```python
    train = hos_keras.data.cifar10("train", data_dir="/data/tfds")
    test = hos_keras.data.cifar10("test", data_dir="/data/tfds")
    ```
    """
    return _cifar(
        "cifar10", split, data_dir, batch_size, augment, shuffle, seed, download, limit
    )


def cifar100(
    split: str = "train",
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int | None = 0,
    download: bool = False,
    limit: int | None = None,
) -> tf.data.Dataset:
    """CIFAR-100 (fine labels) through tensorflow-datasets; see `cifar10`."""
    return _cifar(
        "cifar100", split, data_dir, batch_size, augment, shuffle, seed, download, limit
    )


def imagenet(
    split: str = "train",
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    batch_size: int = 64,
    image_size: int = 224,
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int | None = 0,
    download: bool = True,
) -> tf.data.Dataset:
    """ImageNet (ILSVRC 2012) through tensorflow-datasets, scaled to [-1, 1].

    Training images get a random resized crop (8-100% of the area, aspect 3/4-4/3)
    and a horizontal flip; validation images are resized so that the center crop
    is 87.5% of the shorter side, then center-cropped.

    Args:
        split: `"train"` or `"validation"`. Defaults to `"train"`.
        data_dir: Where tensorflow-datasets keeps the prepared data.
        manual_dir: Directory holding `ILSVRC2012_img_train.tar` and
            `ILSVRC2012_img_val.tar`, used the first time to prepare the data.
        batch_size: Batch size. Defaults to `64`.
        image_size: Side of the crops. Defaults to `224`.
        augment: Defaults to `None`: on for the training split.
        shuffle: Defaults to `None`: on for the training split.
        seed: Shuffle seed. Defaults to `0`.
        download: Prepare the data from `manual_dir` if it is not prepared (no
            network: ImageNet's files are never downloaded). Defaults to `True`.

    Returns:
        A batched `tf.data.Dataset` of `(float32 [b, s, s, 3], int64 [b])`.

    Raises:
        DatasetNotFoundError: if the data is not prepared and cannot be (the
            message says where the archives must go).
        InvalidArgumentError: for an unknown split or a bad size.
    """
    split = _check_split(split, ("train", "validation"))
    batch_size = check_int("batch_size", batch_size)
    image_size = check_int("image_size", image_size, minimum=8, hint=", e.g. 224")
    training = split == "train"
    ds, size = _tfds_split("imagenet2012", split, data_dir, download, manual_dir)
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle

    def crop(image, label):
        if augment:
            begin, extent, _ = tf.image.sample_distorted_bounding_box(
                tf.shape(image),
                bounding_boxes=tf.zeros([1, 0, 4]),
                min_object_covered=0.1,
                aspect_ratio_range=(3 / 4, 4 / 3),
                area_range=(0.08, 1.0),
                max_attempts=10,
                use_image_if_no_bounding_boxes=True,
            )
            image = tf.slice(image, begin, extent)
            image = tf.image.resize(image, [image_size, image_size])
            image = tf.image.random_flip_left_right(image)
        else:
            shape = tf.cast(tf.shape(image)[:2], tf.float32)
            scale = (image_size / 0.875) / tf.reduce_min(shape)
            resized = tf.cast(tf.round(shape * scale), tf.int32)
            image = tf.image.resize(image, resized)
            image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
        return image / 127.5 - 1.0, tf.cast(label, tf.int64)

    if shuffle:
        ds = ds.shuffle(min(size or 10_000, 10_000), seed=seed)
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """Reads a gzipped IDX file (big-endian header, uint8 data)."""
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise DatasetNotFoundError(
            f"{path} is not a readable gzip file ({error}); reinstall it (apt-get "
            "install --reinstall dataset-fashion-mnist) or remove it."
        ) from error
    header = 4 * (1 + ndim)
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DatasetNotFoundError(
            f"{path} is not an IDX file with magic number {magic}; the file is "
            "corrupt or not Fashion-MNIST."
        )
    shape = tuple(
        int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)
    )
    if len(data) - header != int(np.prod(shape)):
        raise DatasetNotFoundError(
            f"{path} holds {len(data) - header} bytes of data for shape {shape}; "
            "the file is truncated or corrupt."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _fashion_mnist_dirs(data_dir: str | None) -> list[str]:
    if data_dir is not None:
        return [data_dir]
    dirs = []
    if os.environ.get(_FASHION_MNIST_ENV):
        dirs.append(os.environ[_FASHION_MNIST_ENV])
    dirs.append(FASHION_MNIST_DIR)
    return dirs


def fashion_mnist_arrays(
    data_dir: str | None = None, download: bool = True, *, standardize: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as arrays: `((x_train, y_train), (x_test, y_test))`.

    Looks for the four IDX `.gz` files in `data_dir`, or else in
    `$HOS_KERAS_FASHION_MNIST` and in `/usr/share/datasets/fashion-mnist` (where
    `apt-get install dataset-fashion-mnist` puts them); without them, and with
    `download=True`, falls back to `keras.datasets.fashion_mnist.load_data()`.

    Args:
        data_dir: Directory with the IDX files. Defaults to `None` (search).
        download: Whether the Keras download is tried when no files are found.
            Defaults to `True`.
        standardize: Return the images ready for the models of this package
            (and `fashion_mnist`'s): float32 `[n, 28, 28, 1]`, scaled to [0, 1]
            and standardized with the training set's mean and standard
            deviation. Defaults to `False`: the raw uint8 `[n, 28, 28]` images.

    Returns:
        Images and int labels `[n]`, 60,000 for training and 10,000 for testing.

    Raises:
        DatasetNotFoundError: if no copy is found or downloadable (the message
            says how to get one), or the files are corrupt.

    Example:

    ```python
    (x, y), (x_test, y_test) = data.fashion_mnist_arrays(standardize=True)
    model.fit(x, y)  # a model with input shape (28, 28, 1)
    ```
    """
    (x, y), (xt, yt) = _fashion_mnist_raw(data_dir, download)
    if standardize:
        (mean,), (std,) = _FASHION_MNIST_STATS
        x, xt = (((a[..., None] / np.float32(255.0)) - mean) / std for a in (x, xt))
        x, xt = x.astype(np.float32), xt.astype(np.float32)
    return (x, y), (xt, yt)


def _fashion_mnist_raw(data_dir, download):
    """`fashion_mnist_arrays` without standardization."""
    searched = _fashion_mnist_dirs(data_dir)
    for directory in searched:
        paths = {
            split: [os.path.join(directory, f) for f in files]
            for split, files in _FASHION_MNIST_FILES.items()
        }
        if all(os.path.exists(p) for ps in paths.values() for p in ps):
            result = []
            for split in ("train", "test"):
                images = _read_idx(paths[split][0], 2051, 3)
                labels = _read_idx(paths[split][1], 2049, 1)
                if len(images) != len(labels):
                    raise DatasetNotFoundError(
                        f"{paths[split][0]} has {len(images)} images but "
                        f"{paths[split][1]} has {len(labels)} labels; the files "
                        "do not belong together."
                    )
                result.append((images, labels))
            return result[0], result[1]
    hint = (
        f"Fashion-MNIST was not found in {searched}. Install Debian's package "
        "(`apt-get install dataset-fashion-mnist`), or put "
        f"{', '.join(f for fs in _FASHION_MNIST_FILES.values() for f in fs)} in a "
        f"directory and pass data_dir= or set {_FASHION_MNIST_ENV}"
    )
    if data_dir is not None or not download:
        raise DatasetNotFoundError(hint + ".")
    import keras

    try:
        (x, y), (xt, yt) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # any download failure: one clear message
        raise DatasetNotFoundError(
            f"{hint}; the download fallback failed too ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]})."
        ) from error
    return (x, y), (xt, yt)


def fashion_mnist(
    split: str = "train",
    *,
    data_dir: str | None = None,
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int | None = 0,
    download: bool = True,
    limit: int | None = None,
) -> tf.data.Dataset:
    """Fashion-MNIST as a `tf.data.Dataset`, standardized; see `fashion_mnist_arrays`.

    Args:
        split: `"train"` or `"test"`. Defaults to `"train"`.
        data_dir: Directory with the IDX `.gz` files. Defaults to `None` (search).
        batch_size: Batch size. Defaults to `128`.
        augment: Pad 2 + random 28x28 crop + horizontal flip. Defaults to `None`:
            on for the training split.
        shuffle: Defaults to `None`: on for the training split.
        seed: Shuffle seed. Defaults to `0`.
        download: Allow the Keras download fallback. Defaults to `True`.
        limit: Use only the first `limit` examples (quick runs). Defaults to
            `None` (all).

    Returns:
        A batched `tf.data.Dataset` of `(float32 [b, 28, 28, 1], int64 [b])`;
        the training split drops its last partial batch.

    Raises:
        DatasetNotFoundError: if no copy is found (the message says how to get
            one).
        InvalidArgumentError: for an unknown split, a bad batch size or limit.
    """
    split = _check_split(split, ("train", "test"))
    batch_size = check_int("batch_size", batch_size)
    train, test = fashion_mnist_arrays(data_dir, download)
    images, labels = train if split == "train" else test
    if limit is not None:
        limit = check_int("limit", limit, hint=" or None")
        images, labels = images[:limit], labels[:limit]
    training = split == "train"
    ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    mean, std = _FASHION_MNIST_STATS
    return _pipeline(
        ds,
        size=len(images),
        batch_size=batch_size,
        training=training,
        augment=training if augment is None else augment,
        shuffle=training if shuffle is None else shuffle,
        seed=seed,
        normalize=_standardize(mean, std),
        augmentation=_pad_crop_flip(2),
        cache=True,
    )


def load(name: str, split: str = "train", **kwargs) -> tf.data.Dataset:
    """Any dataset by name: `"cifar10"`, `"cifar100"`, `"imagenet2012"`,
    `"fashion_mnist"`.

    Args:
        name: Dataset name (see `dataset_names()`).
        split: The split (`"train"`, `"test"`; `"validation"` for ImageNet, where
            `"test"` is taken to mean `"validation"`).
        **kwargs: Arguments of the dataset's loader.

    Returns:
        The loader's `tf.data.Dataset`.

    Raises:
        UnknownNameError: for an unknown name (the known ones are listed).
    """
    loaders = {
        "cifar10": cifar10,
        "cifar100": cifar100,
        "imagenet2012": imagenet,
        "fashion_mnist": fashion_mnist,
    }
    name = _check_name(name)
    if name == "imagenet2012" and split == "test":
        split = "validation"
    return loaders[name](split, **kwargs)
