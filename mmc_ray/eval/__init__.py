"""Evaluation: refinement accuracy by round, critic verdict and step-error detection, reports."""
