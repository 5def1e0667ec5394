"""Reference classifiers for the ablation: the majority class and TF-IDF + balanced logistic regression,
fitted on each seed's prepare splits and scored on the same test split as the pipeline's rows."""

from __future__ import annotations

from stages.common import ROOT


def flatten_test(metrics: dict) -> dict[str, float]:
    return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
            "neutral_f1": metrics["per_class"].get("neutral", {}).get("f1", float("nan")), "ece": metrics["ece"]}


def references(seeds: list[int]) -> list[tuple[str, dict[str, list[float]]]]:
    """Majority class and TF-IDF + balanced logistic regression on each seed's prepare splits."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from stages.common import load_section, read_jsonl
    from stages.evaluate import classification_metrics
    from stages.prepare import DataParams, run as prepare

    scores: dict[str, dict[str, list[float]]] = {"majority class": {}, "TF-IDF + LR (balanced)": {}}
    for seed in seeds:
        out = ROOT / f".cache/bench/prepare-s{seed}"
        prepare(load_section(DataParams, "data"), seed, out_dir=out, metrics_path=out / "metrics.json")
        train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
        labels = sorted({r["label"] for r in train})
        y_train = np.array([labels.index(r["label"]) for r in train])
        y_test = np.array([labels.index(r["label"]) for r in test])
        majority = np.zeros((len(test), len(labels)))
        majority[:, np.bincount(y_train).argmax()] = 1.0
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
        clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit(vec.fit_transform([r["text"] for r in train]), y_train)
        tfidf = clf.predict_proba(vec.transform([r["text"] for r in test]))
        for name, probs in (("majority class", majority), ("TF-IDF + LR (balanced)", tfidf)):
            m = classification_metrics(np.clip(probs, 1e-12, 1), y_test, labels, 10)
            for key, value in flatten_test(m).items():
                scores[name].setdefault(key, []).append(value)
    return list(scores.items())
