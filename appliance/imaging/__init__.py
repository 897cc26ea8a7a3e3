"""Pixel work (decode, window, render, transcode): pure functions, no I/O."""
