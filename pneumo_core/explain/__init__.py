"""Explanations: the Grad-CAM family, the chest mask and the faithfulness of a heatmap.
"""
