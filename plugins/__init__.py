"""The built-in plug-ins of wsolbench (installed as ``wsolbench_plugins``).

They are registered through exactly the same hooks as third-party plug-ins;
each registration names its implementation as a ``"module:attr"`` string so
that listing names never imports torch. The one-line descriptions that
``wsolbench list`` shows are the classes' ``summary`` attributes, read from
the modules' source; keep each one a string literal.
"""
