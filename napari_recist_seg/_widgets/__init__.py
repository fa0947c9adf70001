"""napari dock widgets: thin Qt front ends over the core."""
