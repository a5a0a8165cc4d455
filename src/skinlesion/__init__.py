"""skinlesion: classify dermoscopic photos into the ISIC 2019 diagnoses.

A research tool, not a diagnosis.
"""

__version__ = "0.1.0"
