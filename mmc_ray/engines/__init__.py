"""Generation engines behind one protocol: see `base.GenerationEngine`."""
