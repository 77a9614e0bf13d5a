"""Edit-triplet and preference-pair data: the synthetic world, the manifest interchange format,
annotation by LVLM judges, quality metrics and builders of Hub datasets."""
