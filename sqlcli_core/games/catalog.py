"""The game catalog: game sets, name resolution, minimal action sets and reference scores.

Names are accepted in any case, as CamelCase (`MsPacman`), as ALE ROM ids (`ms_pacman`) or as gymnasium
ids (`ALE/MsPacman-v5`). DQN-Replay indexes actions in the game's minimal action set, and ALE is the authority on
what that set is: the sets (and each game's modes and difficulties) are recorded from ALE in `action_sets.py`, so
that the catalog never loads an emulator; `ale_rom_facts` reads them from ALE, for the test that checks the record.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Iterable, Sequence

from sqlcli_core.errors import UsageError
from sqlcli_core.games.action_sets import ALE_FACTS
from sqlcli_core.synthetic.chain import DIAGNOSTIC, chain_spec

ATARI40 = (
    "Amidar", "Assault", "Asterix", "Atlantis", "BankHeist", "BattleZone", "BeamRider", "Boxing",
    "Breakout", "Carnival", "Centipede", "ChopperCommand", "CrazyClimber", "DemonAttack", "DoubleDunk",
    "Enduro", "FishingDerby", "Freeway", "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "NameThisGame", "Phoenix", "Pooyan", "Qbert",
    "Riverraid", "Robotank", "Seaquest", "TimePilot", "UpNDown", "VideoPinball", "WizardOfWor",
    "YarsRevenge", "Zaxxon",
)
ATARI41 = tuple(sorted(ATARI40 + ("RoadRunner",)))
HELDOUT5 = ("Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner")
ONLINE_VARIANTS = ("Freeway", "Hero", "Breakout")
ATARI57 = (
    "Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist", "BattleZone",
    "BeamRider", "Berzerk", "Bowling", "Boxing", "Breakout", "Centipede", "ChopperCommand",
    "CrazyClimber", "Defender", "DemonAttack", "DoubleDunk", "Enduro", "FishingDerby", "Freeway",
    "Frostbite", "Gopher", "Gravitar", "Hero", "IceHockey", "Jamesbond", "Kangaroo", "Krull",
    "KungFuMaster", "MontezumaRevenge", "MsPacman", "NameThisGame", "Phoenix", "Pitfall", "Pong",
    "PrivateEye", "Qbert", "Riverraid", "RoadRunner", "Robotank", "Seaquest", "Skiing", "Solaris",
    "SpaceInvaders", "StarGunner", "Surround", "Tennis", "TimePilot", "Tutankham", "UpNDown", "Venture",
    "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)
DQN_REPLAY60 = tuple(sorted(
    set(ATARI57) - {"Defender", "Surround"}
    | {"AirRaid", "Carnival", "ElevatorAction", "JourneyEscape", "Pooyan"}
))

GAME_SETS: dict[str, tuple[str, ...]] = {
    "atari40": ATARI40,
    "atari41": ATARI41,
    "heldout5": HELDOUT5,
    "dqn-replay60": DQN_REPLAY60,
    "atari57": ATARI57,
    "online-variants": ONLINE_VARIANTS,
    "diagnostic": DIAGNOSTIC,  # known-answer synthetic games (sqlcli_core.synthetic)
}

# (random, human): the standard Atari-57 references (Mnih et al. 2015 / Wang et al. 2016), as tabulated
# by Dopamine. VideoPinball's random score is Dopamine's 0.0 (DQN Zoo uses 16256.9).
REFERENCE_SCORE_SOURCE = (
    "Atari-57 random/human references as tabulated by Dopamine (VideoPinball random = 0.0; "
    "DQN Zoo uses 16256.9)"
)
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3), "Asteroids": (719.1, 47388.7), "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1), "BattleZone": (2360.0, 37187.5), "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4), "Bowling": (23.1, 160.7), "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5), "Centipede": (2090.9, 12017.0), "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4), "DemonAttack": (152.1, 1971.0), "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5), "FishingDerby": (-91.7, -38.7), "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5), "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4), "IceHockey": (-11.2, 0.9), "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5), "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3), "MsPacman": (307.3, 6951.6), "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6), "Pitfall": (-229.4, 6463.7), "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3), "Qbert": (163.9, 13455.0), "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0), "Robotank": (2.2, 11.9), "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9), "Solaris": (1236.3, 12326.7), "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0), "Tennis": (-23.8, -8.3), "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6), "UpNDown": (533.4, 11693.2), "Venture": (0.0, 1187.5),
    "VideoPinball": (0.0, 17667.9), "WizardOfWor": (563.5, 4756.5), "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

KNOWN_GAMES: tuple[str, ...] = tuple(sorted(set(DQN_REPLAY60) | set(ATARI57)))


def rom_id(name: str) -> str:
    """ALE ROM id of a CamelCase game name: `MsPacman` -> `ms_pacman`, `UpNDown` -> `up_n_down`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_BY_SQUASHED = {_squash(g): g for g in KNOWN_GAMES + DIAGNOSTIC}


@dataclasses.dataclass(frozen=True)
class Game:
    """One Atari game as the toolkit knows it."""

    name: str  # CamelCase, as in the DQN-Replay bucket: "MsPacman"

    @property
    def rom(self) -> str:
        """ALE ROM id, e.g. "ms_pacman"."""
        return rom_id(self.name)

    @property
    def gym_id(self) -> str:
        """gymnasium id, e.g. "ALE/MsPacman-v5"."""
        return f"ALE/{self.name}-v5"

    @property
    def num_actions(self) -> int:
        """Size of the minimal action set, as DQN-Replay indexes actions."""
        return len(minimal_action_set(self.name))

    @property
    def synthetic(self) -> bool:
        """A known-answer game of `sqlcli_core.synthetic` (not an Atari ROM)."""
        return chain_spec(self.name) is not None

    @property
    def normalization(self) -> str:
        """What a normalised score means: 'human' (0 = random, 1 = human) or 'optimal' (0 = random play,
        1 = the optimal return: the synthetic games, whose optimum is known exactly)."""
        return "optimal" if self.synthetic else "human"

    @property
    def reference(self) -> tuple[float, float] | None:
        """(random, human) reference scores, or None where no standard reference exists; for a synthetic
        game (random play's expected return, the optimal return)."""
        spec = chain_spec(self.name)
        if spec is not None:
            from sqlcli_core.synthetic.chain import optimal_return, random_return

            return random_return(spec), optimal_return(spec)
        return REFERENCE_SCORES.get(self.name)

    def human_normalized(self, score: float) -> float | None:
        """(score - random) / (human - random), or None without a reference (for a synthetic game the
        reference is random play and the optimum: see `normalization`)."""
        ref = self.reference
        if ref is None:
            return None
        random_score, human_score = ref
        return (score - random_score) / (human_score - random_score)


def canonical_name(text: str) -> str:
    """Resolve one user-typed game name to its CamelCase form, or raise with a close match."""
    raw = text.strip()
    body = raw
    if body.lower().startswith("ale/"):
        body = body[4:]
    body = re.sub(r"-v\d+$", "", body)
    squashed = _squash(body)
    if squashed in _BY_SQUASHED:
        return _BY_SQUASHED[squashed]
    close = difflib.get_close_matches(squashed, list(_BY_SQUASHED), n=1, cutoff=0.6)
    hint = f"did you mean '{_BY_SQUASHED[close[0]]}'?" if close else (
        "see `sql games` for the known games and sets")
    raise UsageError(f"unknown game '{raw}'", hint=hint)


def resolve_games(spec: str | Iterable[str]) -> list[Game]:
    """Expand a comma-separated list of game names and set names into games, in order, without repeats.

    >>> [g.name for g in resolve_games("pong,ALE/Breakout-v5")]
    ['Pong', 'Breakout']
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        key = item.lower()
        if key in GAME_SETS:
            names.extend(GAME_SETS[key])
            continue
        try:
            names.append(canonical_name(item))
        except UsageError as err:
            close = difflib.get_close_matches(key, list(GAME_SETS), n=1, cutoff=0.7)
            if close:
                raise UsageError(f"unknown game or set '{item}'", hint=f"did you mean '{close[0]}'?") from None
            raise err
    if not names:
        raise UsageError("no games given", hint="pass --games with a set such as atari40 or names like pong,breakout")
    return [Game(n) for n in dict.fromkeys(names)]


def _quiet_ale():
    import ale_py  # only to verify the recorded facts: loading ALE takes a while and prints a banner

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    return ale_py


def ale_rom_facts(name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(minimal action set, modes, difficulties) of a game as ALE reports them, loading its ROM."""
    ale_py = _quiet_ale()
    from ale_py import roms

    try:
        path = roms.get_rom_path(rom_id(name))
    except Exception as exc:  # ale-py raises different types across versions
        raise UsageError(f"ALE has no ROM for '{name}'", hint="upgrade ale-py (it ships the ROMs)") from exc
    ale = ale_py.ALEInterface()
    ale.loadROM(str(path))
    actions = tuple(int(a.value) for a in ale.getMinimalActionSet())
    modes = tuple(int(m) for m in ale.getAvailableModes())
    difficulties = tuple(int(d) for d in ale.getAvailableDifficulties())
    return actions, modes, difficulties


@functools.cache
def _rom_facts(name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The recorded facts of a known game; ALE's answer for a name outside the record."""
    return ALE_FACTS.get(name) or ale_rom_facts(name)


def minimal_action_set(name: str) -> tuple[int, ...]:
    """ALE action ids of the game's minimal action set, in ALE's order (DQN-Replay's action index).

    A synthetic game's actions are numbered 0..A-1 (the ids the Decision Transformer's shared tokens use)."""
    spec = chain_spec(name)
    if spec is not None:
        return tuple(range(spec.num_actions))
    return _rom_facts(name)[0]


def available_modes(name: str) -> tuple[int, ...]:
    return () if chain_spec(name) else _rom_facts(name)[1]


def available_difficulties(name: str) -> tuple[int, ...]:
    return () if chain_spec(name) else _rom_facts(name)[2]


def validate_variant(game: Game, mode: int | None, difficulty: int | None) -> None:
    """Raise a UsageError naming the valid values when ALE does not offer this mode or difficulty."""
    if mode is not None and mode not in available_modes(game.name):
        raise UsageError(
            f"{game.name} has no mode {mode}",
            hint=f"ALE offers modes {list(available_modes(game.name))}",
        )
    if difficulty is not None and difficulty not in available_difficulties(game.name):
        raise UsageError(
            f"{game.name} has no difficulty {difficulty}",
            hint=f"ALE offers difficulties {list(available_difficulties(game.name))}",
        )


def game_index(games: Sequence[Game], name: str) -> int:
    """Position of a game in a list of games (e.g. the heads of a checkpoint), or a clear error."""
    canon = canonical_name(name)
    for i, g in enumerate(games):
        if g.name == canon:
            return i
    raise UsageError(
        f"game '{canon}' is not among {len(games)} games of this checkpoint",
        hint="its games are " + ", ".join(g.name for g in games),
    )
