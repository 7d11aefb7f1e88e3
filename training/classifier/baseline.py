"""TF-IDF + linear SVM baseline, scored on exactly the split the neural model uses."""

from __future__ import annotations

import numpy as np


def tfidf_svm_model(C: float = 1.0):
    """The baseline, unfitted: sublinear TF-IDF of word 1-2-grams (df >= 2) -> LinearSVC."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    return make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2), LinearSVC(C=C))


def tfidf_svm(train_texts: list[str], train_labels: list[int], test_texts: list[str], C: float = 1.0) -> np.ndarray:
    """Fit on the training texts, return predicted class ids for the test texts."""
    model = tfidf_svm_model(C).fit(train_texts, train_labels)
    return np.asarray(model.predict(test_texts))
