"""Hide-and-Seek for wsolbench: an example of a third-party plug-in distribution.

It adds, through wsolbench's hooks (see :mod:`wsolbench_hide_and_seek.plugin`):

- the method ``hide-and-seek`` (:mod:`.method`);
- the pooling head ``gem``, generalized-mean pooling (:mod:`.pooling`);
- the subcommand ``wsolbench hide-and-seek-demo`` (:mod:`.demo`).
"""

__version__ = "0.1.0"
