"""Augmentation inside the compiled epoch (``gather_batch``): ±1-pixel shifts of 8×8 images,
Gaussian noise and mixup are correct, seeded, and drawn fresh every epoch."""

from __future__ import annotations

import numpy as np
import pytest

import nbnet
from nbnet.data.load import load_dataset
from nbnet.kernels import cpu as K


def shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) pixels, zeros where it came in from outside."""
    out = np.zeros_like(img)
    h, w = img.shape
    for y in range(h):
        for x in range(w):
            sy, sx = y - dy, x - dx
            if 0 <= sy < h and 0 <= sx < w:
                out[y, x] = img[sy, sx]
    return out


def options(img=(0, 0), noise=0.0, mixup=0.0, batch=16):
    hp = np.zeros(K.N_HP)
    hp[K.HP_NOISE], hp[K.HP_MIXUP] = noise, mixup
    opt = np.zeros(K.N_SETTINGS, np.int64)
    opt[K.SETTING_BATCH], opt[K.SETTING_IMG_H], opt[K.SETTING_IMG_W] = batch, img[0], img[1]
    return hp, opt


def gather(X, Y, idx, hp, opt, state):
    Xb = np.zeros((len(idx), X.shape[1]), X.dtype)
    Yb = np.zeros((len(idx), Y.shape[1]), Y.dtype)
    K.gather_batch(X, Y, np.empty(0), idx, Xb, Yb, np.empty(0), hp, opt, state)
    return Xb, Yb


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("builtin:digits")
    X = ds.X[:200] / 16.0
    Y = np.eye(10)[ds.y[:200]]
    return X, Y


def test_shift_is_exactly_one_pixel_of_an_8x8_image(digits):
    X, Y = digits
    idx = np.arange(120, dtype=np.int64)
    hp, opt = options(img=(8, 8))
    state = K.seed_state(7)
    replay = state.copy()
    Xb, Yb = gather(X, Y, idx, hp, opt, state)
    seen = set()
    for i, r in enumerate(idx):
        # replay the generator: two draws in {0, 1, 2} per image, in the kernel's order
        dy = int(K.rng_below(replay, 3)) - 1
        dx = int(K.rng_below(replay, 3)) - 1
        seen.add((dy, dx))
        np.testing.assert_array_equal(Xb[i].reshape(8, 8), shifted(X[r].reshape(8, 8), dy, dx))
        np.testing.assert_array_equal(Yb[i], Y[r])  # labels unchanged by a shift
    assert seen == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}  # all nine shifts occur
    assert state[0] == replay[0]  # the kernel drew exactly those numbers


def test_shift_moves_content_the_right_way():
    img = np.zeros((8, 8))
    img[3, 4] = 1.0
    for dy, dx in [(1, 0), (-1, 0), (0, 1), (0, -1), (1, -1)]:
        moved = shifted(img, dy, dx)
        assert moved[3 + dy, 4 + dx] == 1.0 and moved.sum() == 1.0
    edge = np.zeros((8, 8))
    edge[0, :] = 1.0
    assert shifted(edge, -1, 0).sum() == 0.0  # the top row leaves the image: zeros come in below


def test_no_augmentation_copies_rows(digits):
    X, Y = digits
    idx = np.array([5, 3, 9], np.int64)
    Xb, Yb = gather(X, Y, idx, *options(), K.seed_state(0))
    np.testing.assert_array_equal(Xb, X[idx])
    np.testing.assert_array_equal(Yb, Y[idx])


def test_noise_is_gaussian_with_the_given_std(digits):
    X, Y = digits
    idx = np.arange(200, dtype=np.int64)
    Xb, Yb = gather(X, Y, idx, *options(noise=0.3), K.seed_state(1))
    diff = (Xb - X).ravel()
    assert abs(diff.mean()) < 0.01 and abs(diff.std() - 0.3) < 0.01
    kurt = np.mean((diff / diff.std()) ** 4)
    assert abs(kurt - 3.0) < 0.2  # Gaussian tails, not uniform (1.8)
    np.testing.assert_array_equal(Yb, Y)


def test_mixup_mixes_inputs_and_targets_with_one_lambda(digits):
    X, Y = digits
    idx = np.arange(32, dtype=np.int64)
    state = K.seed_state(3)
    replay = state.copy()
    Xb, Yb = gather(X, Y, idx, *options(mixup=0.4), state)
    lam = K.rng_beta(replay, 0.4, 0.4)
    perm = np.arange(32)
    K.shuffle(perm, replay)
    np.testing.assert_allclose(Xb, lam * X[idx] + (1 - lam) * X[idx][perm], atol=1e-12)
    np.testing.assert_allclose(Yb, lam * Y[idx] + (1 - lam) * Y[idx][perm], atol=1e-12)
    np.testing.assert_allclose(Yb.sum(1), 1.0)  # soft labels stay distributions
    assert 0.0 < lam < 1.0


def test_augmentation_is_seeded(digits):
    X, Y = digits
    idx = np.arange(64, dtype=np.int64)
    hp, opt = options(img=(8, 8), noise=0.1, mixup=0.2)
    a = gather(X, Y, idx, hp, opt, K.seed_state(11))
    b = gather(X, Y, idx, hp, opt, K.seed_state(11))
    c = gather(X, Y, idx, hp, opt, K.seed_state(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


AUG = {"noise": dict(noise_std=0.2), "shift": dict(image_shape=(8, 8)), "mixup": dict(mixup_alpha=0.3)}


@pytest.mark.parametrize("kind", list(AUG))
def test_fresh_every_epoch_and_reproducible(digits, kind):
    """With a learning rate too small to move float32 weights and no shuffling, each epoch's loss
    depends only on the augmented batches: equal without augmentation, different with it (fresh
    draws every epoch), and the same sequence for the same seed."""
    X, Y = digits
    y = Y.argmax(1)

    def losses(seed, **aug):
        clf = nbnet.MLPClassifier((16,), optimizer="sgd", learning_rate=1e-300, epochs=4, batch_size=50,
                                  shuffle=False, seed=seed, **aug).fit(X, y)
        return clf.history_["loss"]

    plain = losses(0)
    assert len(set(plain)) == 1
    aug = losses(0, **AUG[kind])
    assert len(set(aug)) == 4
    assert losses(0, **AUG[kind]) == aug
    assert losses(1, **AUG[kind]) != aug
