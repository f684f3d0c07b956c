"""Activities: all I/O of a build. The activities themselves are at the top (roles, mirror,
projects); what they do is in packages by mechanism, each of which imports only the shared
helpers here (beat, paths) and packages before it:

    model, sandbox, repository    (independent of each other)
    testing, delivery             (run in the sandbox, on a repository)
    mirror, projects, then roles  (the activities the worker registers)

tests/test_layers.py holds each module to this order.
"""
