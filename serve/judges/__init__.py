"""Guard judges: label an answer Accept / Caution / Refuse and estimate the prompt's harm."""
