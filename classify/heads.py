"""The heads as scikit-learn Pipelines (scaling + classifier), each with its default GridSearchCV grid."""

from __future__ import annotations

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from extract.errors import UsageError

# Default grids: a decade apart, around the values that work for standardised CNN features.
DEFAULT_GRIDS = {
    "svm": {"C": [1.0, 10.0]},
    "linearsvm": {"C": [0.0001, 0.001, 0.01]},
    "logreg": {"C": [0.01, 0.1, 1.0]},
}
HEADS = tuple(DEFAULT_GRIDS)


def build_head(name: str) -> Pipeline:
    """An unfitted Pipeline: standardise each feature, then the classifier (step name `clf`)."""
    from sklearn.linear_model import LogisticRegression

    classifiers = {
        "svm": lambda: SVC(kernel="rbf", gamma="scale"),
        "linearsvm": lambda: LinearSVC(dual="auto", max_iter=5000),
        "logreg": lambda: LogisticRegression(max_iter=2000),
    }
    if name not in classifiers:
        raise UsageError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return Pipeline([("scale", StandardScaler()), ("clf", classifiers[name]())])


def _parse_value(text: str):
    text = text.strip()
    if text in ("None", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(text: str | None, head: str) -> dict[str, list]:
    """'C=0.1,1,10; gamma=scale,0.01' -> {'clf__C': [...], 'clf__gamma': [...]}, checked against the head."""
    grid = DEFAULT_GRIDS[head] if not text else {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        name, sep, values = part.partition("=")
        parsed = [_parse_value(v) for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not parsed:
            raise UsageError(f"--grid part {part!r} does not parse; write it as NAME=V1,V2[;NAME=V1,...], "
                             "e.g. \"C=0.1,1,10\"")
        grid[name.strip()] = parsed
    valid = build_head(head).named_steps["clf"].get_params()
    unknown = [name for name in grid if name not in valid]
    if unknown:
        raise UsageError(f"{head} has no parameter {', '.join(unknown)}; its parameters are "
                         f"{', '.join(sorted(valid))}")
    return {f"clf__{name}": values for name, values in grid.items()}


def fitted_parameter_count(pipeline: Pipeline) -> int:
    """Numbers the fitted classifier learned (weights and biases; for a kernel SVM, its dual coefficients)."""
    classifier = pipeline.named_steps["clf"]
    return int(sum(getattr(classifier, name).size for name in ("coef_", "intercept_", "dual_coef_")
                   if hasattr(classifier, name) and not (name == "coef_" and hasattr(classifier, "dual_coef_"))))
