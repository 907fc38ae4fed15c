"""A seeded, offline reimplementation of the Pathfinder generator (Linsley et al., 2018).

``settings`` holds the settings and LRA's values, ``draw`` draws one image, ``write`` writes a
data set in the release's layout (its command line: ``python -m data_modules.lra.pathfinder
generate``, :mod:`data_modules.lra.pathfinder.cli`). See
docs/pathfinder_generator.md.
"""
