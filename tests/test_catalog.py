"""The game catalog against the spec's published tables and ALE itself."""

import pytest

from sqlcli_core.errors import UsageError
from sqlcli_core.games import catalog

# The published minimal action-set sizes (ale-py 0.12; docs/games.md lists them): an independent table.
SPEC_ACTIONS = {
    "Amidar": 10, "Assault": 7, "Asterix": 9, "Atlantis": 4, "BankHeist": 18, "BattleZone": 18,
    "BeamRider": 9, "Boxing": 18, "Breakout": 4, "Carnival": 6, "Centipede": 18, "ChopperCommand": 18,
    "CrazyClimber": 9, "DemonAttack": 6, "DoubleDunk": 18, "Enduro": 9, "FishingDerby": 18, "Freeway": 3,
    "Frostbite": 18, "Gopher": 8, "Gravitar": 18, "Hero": 18, "IceHockey": 18, "Jamesbond": 18,
    "Kangaroo": 18, "Krull": 18, "KungFuMaster": 14, "NameThisGame": 6, "Phoenix": 8, "Pooyan": 6,
    "Qbert": 6, "Riverraid": 18, "Robotank": 18, "Seaquest": 18, "TimePilot": 10, "UpNDown": 6,
    "VideoPinball": 9, "WizardOfWor": 10, "YarsRevenge": 18, "Zaxxon": 18, "Alien": 18, "MsPacman": 9,
    "Pong": 6, "SpaceInvaders": 6, "StarGunner": 18, "RoadRunner": 18,
}


def test_set_sizes():
    assert len(catalog.ATARI40) == 40 and len(set(catalog.ATARI40)) == 40
    assert len(catalog.ATARI41) == 41 and "RoadRunner" in catalog.ATARI41
    assert len(catalog.DQN_REPLAY60) == 60
    assert not set(catalog.HELDOUT5) & set(catalog.ATARI40)


def test_every_known_game_has_a_rom():
    from ale_py import roms

    ids = set(roms.get_all_rom_ids())
    assert [g for g in catalog.KNOWN_GAMES if catalog.rom_id(g) not in ids] == []


def test_recorded_action_sets_modes_and_difficulties_are_ales():
    """The catalog's recorded facts (games/action_sets.py) against ALE itself, every known game's ROM loaded."""
    from sqlcli_core.games.action_sets import ALE_FACTS

    assert set(ALE_FACTS) == set(catalog.KNOWN_GAMES)
    differ = {name: (ALE_FACTS[name], catalog.ale_rom_facts(name)) for name in catalog.KNOWN_GAMES
              if ALE_FACTS[name] != catalog.ale_rom_facts(name)}
    assert differ == {}


def test_the_catalog_answers_without_loading_an_emulator():
    """`sql games` is fast because nothing in the catalog loads ALE (or JAX)."""
    import subprocess
    import sys

    probe = ("import sys; from sqlcli_core.games import catalog; "
             "n = sum(catalog.Game(g).num_actions for g in catalog.KNOWN_GAMES); "
             "catalog.validate_variant(catalog.Game('Breakout'), 12, 1); "
             "print(n, [m for m in ('ale_py', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split(None, 1)
    assert out[1].strip() == "[]" and int(out[0]) > 501


def test_minimal_action_sets_match_the_spec_table():
    got = {name: catalog.Game(name).num_actions for name in SPEC_ACTIONS}
    assert got == SPEC_ACTIONS
    assert sum(catalog.Game(g).num_actions for g in catalog.ATARI40) == 501


@pytest.mark.parametrize("text", ["pong", "Pong", "PONG", "ALE/Pong-v5", "pong-v4"])
def test_name_forms(text):
    assert catalog.canonical_name(text) == "Pong"


def test_rom_ids_of_tricky_names():
    assert catalog.Game("MsPacman").rom == "ms_pacman"
    assert catalog.Game("UpNDown").rom == "up_n_down"
    assert catalog.canonical_name("ms_pacman") == "MsPacman"
    assert catalog.canonical_name("ALE/MsPacman-v5") == "MsPacman"


def test_sets_and_lists_expand_in_order_without_repeats():
    names = [g.name for g in catalog.resolve_games("heldout5,pong,Breakout")]
    assert names == ["Alien", "MsPacman", "Pong", "SpaceInvaders", "StarGunner", "Breakout"]


def test_unknown_names_suggest_a_close_match():
    with pytest.raises(UsageError, match="did you mean 'Pong'"):
        catalog.resolve_games("pongg")
    with pytest.raises(UsageError, match="did you mean 'atari40'"):
        catalog.resolve_games("atari 40")
    with pytest.raises(UsageError, match="no games"):
        catalog.resolve_games(" , ")


def test_human_normalized_scores():
    pong = catalog.Game("Pong")
    assert pong.human_normalized(-20.7) == pytest.approx(0.0)
    assert pong.human_normalized(14.6) == pytest.approx(1.0)
    assert catalog.Game("Pooyan").human_normalized(100.0) is None
    assert catalog.Game("VideoPinball").reference == (0.0, 17667.9)


def test_variants_are_validated_against_ale():
    breakout = catalog.Game("Breakout")
    assert 12 in catalog.available_modes("Breakout")
    catalog.validate_variant(breakout, 12, 1)
    with pytest.raises(UsageError, match=r"Breakout has no mode 3 \(ALE offers modes \[0, 4, 8"):
        catalog.validate_variant(breakout, 3, None)
