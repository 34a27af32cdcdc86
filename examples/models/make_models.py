"""Regenerates the example ONNX models served by coscale's built-in runtime.

Trains two classifiers on scikit-learn's bundled iris data (no download) and converts them with
skl2onnx, ZipMap disabled (tract cannot run ZipMap) and a fixed target opset:

- iris/model.onnx      LogisticRegression
- iris-mlp/model.onnx  MLPClassifier 4 -> 512 -> 512 -> 3 (deliberately heavier, for load tests)

Both take one FP32 input "input" of shape [-1, 4] and return "label" (INT64 [-1]) and
"probabilities" (FP32 [-1, 3]). The script prints the expected labels for the sample rows that
examples/models/README.md and crates/coscale-runtime/tests use.

Made with python 3.11.7, scikit-learn==1.9.1, skl2onnx==1.20.0, onnx==1.23.2, numpy==2.4.6,
scipy==1.17.1, protobuf==7.36.2 (target_opset 17, random_state 0).

Run:  python3 -m venv /tmp/venv-models
      /tmp/venv-models/bin/pip install scikit-learn skl2onnx onnx
      /tmp/venv-models/bin/python examples/models/make_models.py
"""

import json
import os

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

TARGET_OPSET = 17
HERE = os.path.dirname(os.path.abspath(__file__))
# Rows of the iris data set used as samples: one of each class, plus two borderline ones.
SAMPLE_ROWS = [0, 50, 100, 70, 133]


def convert(model, name, path):
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx names the graph with a random uuid; a fixed name keeps the files reproducible.
    onx.graph.name = name
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())


def main():
    iris = load_iris()
    x = iris.data.astype(np.float32)
    y = iris.target

    lr = LogisticRegression(max_iter=1000, random_state=0).fit(x, y)
    mlp = MLPClassifier(
        hidden_layer_sizes=(512, 512), max_iter=500, random_state=0
    ).fit(x, y)

    convert(lr, "iris", os.path.join(HERE, "iris", "model.onnx"))
    convert(mlp, "iris_mlp", os.path.join(HERE, "iris-mlp", "model.onnx"))

    samples = x[SAMPLE_ROWS]
    report = {
        "rows": SAMPLE_ROWS,
        "inputs": samples.tolist(),
        "true_labels": y[SAMPLE_ROWS].tolist(),
        "iris": lr.predict(samples).tolist(),
        "iris_probabilities": lr.predict_proba(samples).round(6).tolist(),
        "iris-mlp": mlp.predict(samples).tolist(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
