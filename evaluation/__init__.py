"""editforge.evaluation: ``editforge eval``, one evaluation harness for editing and text-to-image
models (suites, generation, judging, scores and reports)."""
