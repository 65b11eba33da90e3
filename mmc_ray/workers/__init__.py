"""Ray actors that hold an engine for one role (policy, critic, annotator), and their placement."""
