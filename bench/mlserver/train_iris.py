"""Trains a tiny sklearn iris classifier and saves it for MLServer.

Usage: python train_iris.py OUT_DIR
Writes OUT_DIR/model.joblib (LogisticRegression; sklearn ships the iris data, no download).
"""
import os
import sys

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
joblib.dump(model, os.path.join(out, "model.joblib"))
print(os.path.join(out, "model.joblib"))
