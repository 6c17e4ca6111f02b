"""The base: what every part may use and which imports nothing of ours but itself: errors
meant for users, files read and written without trusting them, bounds on sizes, and runtime
helpers (devices, RNG state, the learning-rate schedule, progress)."""
