"""Limits of a live stream that the layers above need to know without loading torch."""

MAX_PROMPTS = 4  # conditional rows a live stream may blend at once (a crossfade needs old and new together)
