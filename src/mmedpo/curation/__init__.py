"""Textual hallucinations and their filters; lesion localizers, regional noise and visual pairs."""
