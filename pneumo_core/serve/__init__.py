"""Serving a call: diagnosis of a film, the PDF report, DICOM SR and secondary capture out.
"""
