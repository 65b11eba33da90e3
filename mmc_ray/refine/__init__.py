"""The actor-critic refinement loop and the resumable driver that writes its records."""
