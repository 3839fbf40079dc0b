"""Known-answer games: small synthetic games with a finite state space whose optimal values are computed
exactly (`chain`: dynamics, frames, value iteration; `emulator`: the games behind the emulator interfaces)."""
