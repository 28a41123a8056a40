"""fedloom.data.split gives exactly scikit-learn's split and bundled datasets, without importing sklearn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedloom.data.split import BUNDLED, load_bundled, train_test_split

sk_split = pytest.importorskip("sklearn.model_selection").train_test_split
skd = pytest.importorskip("sklearn.datasets")


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_datasets_equal_sklearn_loaders(name):
    x, y, names = load_bundled(name)
    bunch = getattr(skd, f"load_{name}")()
    np.testing.assert_array_equal(x, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
    assert names == [str(t) for t in bunch.target_names]


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.33, 0.5])
@pytest.mark.parametrize("stratified", [True, False])
def test_split_equals_sklearn(seed, fraction, stratified):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 97)  # uneven classes: remainders and ties exercise _approximate_mode
    x = rng.normal(size=(97, 3))
    want = sk_split(x, y, test_size=fraction, random_state=seed, stratify=y if stratified else None)
    got = train_test_split(x, y, fraction, seed, y if stratified else None)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_split_of_the_real_datasets_equals_sklearn():
    for name in BUNDLED:
        x, y, _ = load_bundled(name)
        want = sk_split(x, y, test_size=0.2, random_state=3, stratify=y)
        for a, b in zip(train_test_split(x, y, 0.2, 3, y), want):
            np.testing.assert_array_equal(a, b)


def test_loading_iris_does_not_import_sklearn():
    code = (
        "import sys; from fedloom.config import build_config; from fedloom.data import load_data; "
        "load_data(build_config({})); print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
