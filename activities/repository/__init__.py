"""A build's repository: git as a subprocess (gitcmd), the build's workspace (workspace), the
Code Writer's edits worked out before they are written (edits), and the map the models see of
a tree (repomap, over the symbols of pysymbols)."""
