"""Going live at a site: its labelled films, validation, adaptation, triage tiers, monitoring.
"""
