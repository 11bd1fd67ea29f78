"""Backbone lobes: pretrained audio encoders behind SpeechBrain's
``[batch, time, channels]`` + ``wav_lens`` interface, ready for PETL methods.

Authors
 * speechbrain-moe contributors 2026
"""
