"""The chaos suite: faults injected into a running mesh under a steady chat load.

`scenarios` defines the faults, `load` the chatting clients, `measure` the
checks and figures of one run, `runner` the order of it all, and `report`
the table and JSON that `chatmesh chaos run` prints and writes.
"""
