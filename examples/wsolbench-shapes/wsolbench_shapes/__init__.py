"""Shapes for wsolbench: an example of a third-party plug-in distribution.

It adds, through wsolbench's hooks (see :mod:`wsolbench_shapes.plugin`):

- the dataset ``shapes``, discs against squares generated on the fly (:mod:`.dataset`);
- the pooling head ``gem``, generalized-mean pooling (:mod:`.pooling`);
- the subcommand ``wsolbench shapes-preview`` (:mod:`.preview`).
"""

__version__ = "0.1.0"
