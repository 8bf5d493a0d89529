"""Video data: decoding, clip sampling, datasets and the data module."""
