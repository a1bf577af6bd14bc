"""The command line, `python -m pneumo_core ...`: the only place that prints.
"""
