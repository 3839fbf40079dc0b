"""Acting: the game backends behind one protocol (`backend.py`; ALE in `ale_env.py` / `ale_vector.py`), the
acting protocol (`protocol.py`), behaviour policies and epsilon schedules (`policies.py`), the actors
(`actors.py`) and `collect` (playing a loaded policy into DQN-Replay files)."""
