"""napari-recist-seg: RECIST measurements to lesion masks, and a weakly supervised
multi-task segmenter trained from RECIST alone.

The core modules (``recist``, ``targets``, ``clusters``, ``model``, ``training``,
``predict``, ``metrics``, ``data``, ``cli``) never import Qt or napari; the napari layer
lives in ``_widgets`` and ``_sample_data``.
"""

__version__ = "0.1.0"
