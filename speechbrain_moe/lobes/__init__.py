"""Backbone lobes: pretrained audio encoders behind SpeechBrain's
``[batch, time, channels]`` + ``wav_lens`` interface, ready for PETL methods.
"""
