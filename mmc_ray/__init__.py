"""mmc-ray: build, train and serve multimodal critic models (MMC) on Ray."""

__version__ = "0.1.0"
