"""The analytical estimator. Pure: never imports torch."""
