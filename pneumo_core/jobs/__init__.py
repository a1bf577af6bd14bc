"""Long work off the web server: the retraining queue, its runners and their process identity.

Starts training as a subprocess (`python -m pneumo_core train`) and never imports it.
"""
