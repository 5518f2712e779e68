"""mmgate's first-party plugins (installed as the ``mmgate_plugins`` package).

Each is announced under the ``mmgate.plugins`` entry-point group, so a
``[[plugins]]`` table names it by its short name. See docs/plugins.md.
"""
