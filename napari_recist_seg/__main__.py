"""``python -m napari_recist_seg`` is the ``recist-seg`` command line."""

import sys

from napari_recist_seg.cli import main

if __name__ == "__main__":
    sys.exit(main())
