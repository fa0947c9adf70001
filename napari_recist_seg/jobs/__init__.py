"""Bulk jobs shared by the command line and the dock widgets (no Qt here).

Each job is a plain function taking ``progress`` and ``cancel`` arguments from
:mod:`napari_recist_seg.jobs.common` and returning a :class:`~.common.JobReport`.
"""
