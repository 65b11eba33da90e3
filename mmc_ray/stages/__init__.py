"""The stages: generate, search, annotate, actor data (refine is `mmc_ray.refine`)."""
