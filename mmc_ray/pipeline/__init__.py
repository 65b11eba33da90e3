"""Stages that run engines over datasets and join them into pipelines."""
