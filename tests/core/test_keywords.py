"""Keywords: case-, width- and punctuation-insensitive, per locale; then the opt-out classifier
(issue 14 §3: "stop please", "STOP STOP", "Please stop texting me" are opt-outs, YES alone is not
an opt-in). ``classifier = false`` gives back whole-message keywords only."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.keywords import (
    DEFAULT_OPT_OUT,
    Help,
    KeywordSet,
    KeywordSettings,
    Keywords,
    OptIn,
    OptOut,
    Other,
    Yes,
    normalise,
)

KW = Keywords()


@pytest.mark.parametrize("text", ["STOP", "Stop.", " stop ", "STOP ALL", "stop-all", "退订", "退订。", "ＳＴＯＰ",
                                  "Opt Out", "opt-out!", "UNSUBSCRIBE", "Arrêt", "ARRET", "td", "R", "\tQuit\n",
                                  "S.T.O.P", "🛑 stop 🛑"])  # fmt: skip
def test_opt_out_variants(text: str) -> None:
    assert isinstance(KW.classify(text, "+14155550123"), OptOut), text


def test_accents_and_widths_fold() -> None:
    assert normalise("Arrêt") == normalise("ARRET") == "arret"
    assert normalise("ＳＴＯＰ！") == "stop"


@pytest.mark.parametrize("text", ["START", "unstop"])
def test_opt_in(text: str) -> None:
    assert isinstance(KW.classify(text), OptIn)


@pytest.mark.parametrize("text", ["Yes!", "YES", "yes please", "Sí"])
def test_yes_is_only_an_answer(text: str) -> None:
    assert isinstance(KW.classify(text), Yes)
    # a configured yes-word too: it never re-subscribes on its own
    kw = Keywords(KeywordSettings(default=KeywordSet(opt_in=["START", "YES"])))
    assert isinstance(kw.classify(text), Yes)


@pytest.mark.parametrize("text", ["please stop texting me", "stopp", "STOP STOP", "stop please", "Unsubscribe me"])
def test_reasonable_means_opt_out(text: str) -> None:
    got = KW.classify(text)
    assert isinstance(got, OptOut) and got.certain and got.reply, text
    plain = Keywords(KeywordSettings(classifier=False))
    assert plain.classify(text) == Other()


def test_unsure_opt_out_asks_only_when_configured() -> None:
    got = KW.classify("leave me alone")
    assert isinstance(got, OptOut) and not got.certain and got.question == ""
    ask = Keywords(KeywordSettings(opt_out_uncertain="ask"))
    got = ask.classify("leave me alone")
    assert isinstance(got, OptOut) and not got.certain and "YES" in got.question
    assert ask.classify("STOP").question == ""  # a certain opt-out is never questioned


@pytest.mark.parametrize("text", ["HELP", "info?", " Help "])
def test_help(text: str) -> None:
    got = KW.classify(text)
    assert isinstance(got, Help) and got.reply


@pytest.mark.parametrize("text", ["", "...", "where is my order", "start the car", "don't stop the deals"])
def test_not_keywords(text: str) -> None:
    assert KW.classify(text) == Other()


def test_audit_keyword_is_the_configured_word() -> None:
    assert KW.classify("stop.") == OptOut(keyword="STOP", reply=KeywordSet().opt_out_reply)
    assert KW.classify("stop all").keyword == "STOPALL"


def test_per_locale_sets_and_replies() -> None:
    zh = KeywordSet(opt_out=["退订", "TD"], opt_out_reply="退订成功", opt_in=["开通"], help=["帮助"])
    kw = Keywords(KeywordSettings(default=KeywordSet(opt_out=["STOP"]), locales={"86": zh}, classifier=False))
    assert kw.classify("退订", "+8613800138000") == OptOut(keyword="退订", reply="退订成功")
    assert kw.classify("STOP", "+8613800138000") == Other()  # that locale has its own set
    assert kw.classify("退订", "+14155550123") == Other()
    assert isinstance(kw.classify("stop", "14155550123"), OptOut)
    # With the classifier (the default) a conclusive word of any language opts out everywhere,
    # answered with the sender's locale's reply.
    kw = Keywords(KeywordSettings(default=KeywordSet(opt_out=["STOP"]), locales={"86": zh}))
    assert kw.classify("STOP", "+8613800138000") == OptOut(keyword="STOP", reply="退订成功")
    assert kw.classify("退订", "+14155550123").reply == KeywordSet().opt_out_reply


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="both"):
        KeywordSet(opt_out=["STOP"], opt_in=["stop."])
    with pytest.raises(ValueError, match="no letters"):
        KeywordSet(help=["?!"])
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"locales": {"+86": {}}}, KeywordSettings)


_noise = st.text(alphabet=" \t\n.,!?;:-_'\"()[]…。！，", max_size=4)


@given(st.sampled_from(DEFAULT_OPT_OUT), _noise, _noise, st.sampled_from([str.lower, str.upper, str.title, str]))
def test_any_opt_out_with_any_punctuation_and_case(word: str, before: str, after: str, case) -> None:
    assert isinstance(KW.classify(before + case(word) + after), OptOut)


@given(st.text(max_size=80))
def test_normalise_is_idempotent_and_keeps_only_letters_and_digits(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert all(ch.isalnum() for ch in once)


@given(st.text(max_size=80))
def test_classify_is_total(text: str) -> None:
    assert isinstance(KW.classify(text, "+331234567"), OptOut | OptIn | Help | Yes | Other)
