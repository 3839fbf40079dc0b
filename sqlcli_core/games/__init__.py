"""The game catalog: names, sets, minimal action sets (recorded as data) and reference scores.

Free of JAX and of any emulator, so that every layer (data included) and the CLI's start-up may read it.
"""
