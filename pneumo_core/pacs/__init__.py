"""The DICOMweb archive: client, the watcher that scores new films, and the worklist state.
"""
