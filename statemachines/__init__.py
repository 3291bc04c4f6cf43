"""The server lifecycle: the chart (`chart`), its persisted-string API (`lifecycle`), its document (`docs`).

No I/O happens in this package: it only says which event is allowed in which state and where it leads.
"""
