"""The Atari side: the game catalog and the emulator with Dopamine's preprocessing."""
