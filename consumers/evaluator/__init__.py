"""The evaluator: joins predictions with ride outcomes for live accuracy per model version."""
