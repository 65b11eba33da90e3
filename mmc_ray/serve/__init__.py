"""The critic as a Ray Serve application."""
