"""Critiques: the record and its text form, prompts for annotator/critic/actor, and annotators."""
