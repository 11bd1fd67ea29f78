"""Backbone lobes: pretrained audio encoders ready for PETL methods."""
