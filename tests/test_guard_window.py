"""The stream window against the whole text: however a text is cut into pieces, what a
window releases is exactly what scanning the whole text gives, for every detector."""

from __future__ import annotations

import random

import pytest

from runestone.aliases import GuardSpec
from runestone.guards.detectors import BUILTIN, detectors_of, iban_valid, luhn_valid
from runestone.guards.window import TextWindow, scan_whole

EVERY = detectors_of(GuardSpec("all", "both", "redact", tuple(BUILTIN)))
TEXT = (
    "Mail john.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111, "
    "iban GB82 WEST 1234 5698 7654 32, key sk-proj-abcdefghijklmnopqrstuvwxyz012345, "
    "auth Bearer abcdefghijklmnop0123 and AKIAABCDEFGHIJKLMNOP ok."
)
WHOLE = (
    "Mail [REDACTED:email] or call [REDACTED:phone], card [REDACTED:card], "
    "iban [REDACTED:iban], key [REDACTED:secret], "
    "auth [REDACTED:secret] and [REDACTED:secret] ok."
)


def streamed(pieces: list[str], redacts: bool = True) -> str:
    window = TextWindow(EVERY, redacts=redacts)
    out = [window.push(piece)[0] for piece in pieces]
    return "".join(out) + window.flush()[0]


def test_a_whole_text_is_redacted_by_kind() -> None:
    assert scan_whole(EVERY, TEXT, redacts=True)[0] == WHOLE


@pytest.mark.parametrize("step", [1, 3, 7])
def test_every_cut_in_two_and_three_gives_the_whole_texts_answer(step: int) -> None:
    for i in range(0, len(TEXT) + 1, step):
        for j in range(i, len(TEXT) + 1, 11):
            assert streamed([TEXT[:i], TEXT[i:j], TEXT[j:]]) == WHOLE, (i, j)


def test_one_character_at_a_time_gives_the_whole_texts_answer() -> None:
    assert streamed(list(TEXT)) == WHOLE


def test_random_texts_in_random_pieces_match_the_whole_scan() -> None:
    """Texts of findings and words, apart as in prose. (Numbers glued to numbers, with no
    separator, can be cut into other findings depending on where a piece ended.)"""
    rng = random.Random(31)
    parts = [
        "a@b.io", "x.y+z@mail.example.co.uk", "+1 415 555 2671", "(020) 7946 0958",
        "4012 8888 8888 1881", "4012888888881882", "DE89 3704 0044 0532 0130 00",
        "sk-ant-0123456789abcdefghij", "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
        "hello", "world.", "1234", "GB", "sk", "tok12", "@", "-",
    ]  # fmt: skip
    apart = [" ", ", ", "\n", ". ", "; "]
    for _ in range(500):
        chosen = [rng.choice(parts) for _ in range(rng.randint(1, 12))]
        text = "".join(part + rng.choice(apart) for part in chosen)
        whole = scan_whole(EVERY, text, redacts=True)[0]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 6))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert streamed(pieces) == whole, (text, pieces)
        assert streamed(pieces, redacts=False) == text  # log only: released as it came


def test_what_is_held_is_bounded() -> None:
    window = TextWindow(EVERY, redacts=True, limit=64)
    for _ in range(100):
        window.push("1 2 3 4 ")  # digits and spaces may always become a card number
    assert len(window._held) <= 64


def test_the_checks_of_cards_and_ibans() -> None:
    assert luhn_valid("4111 1111 1111 1111") and not luhn_valid("4111 1111 1111 1112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid(
        "GB82 WEST 1234 5698 7654 33"
    )
