"""Lesion regions in medical images and the noise that hides them.

`regions` (a heat map to a region), `localizers` (where the lesion is: the data's
annotations), `gradcam` (or a classifier's Grad-CAM), `noise` (DDPM forward noise
inside a region, seeded per image). Curation's visual pairs and evaluation's
visual dependence both use them, so neither reaches into the other.
"""
