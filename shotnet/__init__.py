"""shotnet: an open acoustic gunshot-detection network."""
__version__ = "0.1.0"
