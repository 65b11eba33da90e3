"""Model building (tiny offline VLM) and loading (local HF folders)."""
