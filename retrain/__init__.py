"""Learning: dataset builders, training, evaluation, the cycle."""
