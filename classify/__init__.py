"""scikit-learn heads trained on cached features: grid search, honest test metrics, saved models."""
