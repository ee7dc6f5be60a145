"""The opt-out replies of the seeds' languages (en, fr, ro, zh) in real-world spellings: each base
phrase also shouted, lower-cased, punctuated, with emoji, in full-width letters and padded with
white space. ``Keywords.classify`` (the tenant's whole-message keywords, then the classifier) must
call every one an opt-out, and none of the non-opt-outs (negated, about an order) one.
The same corpus goes through a real gateway into the consent ledger in
``tests/campaigns/test_opt_out_seam.py``."""

from __future__ import annotations

import pytest

from gateway.core.keywords import Keywords, OptOut

OPT_OUTS = ["stop please", "STOP", "Stop", "arrêt", "ARRET", "dezabonare", "dezabonează-mă", "Dezabonați-mă vă rog",
            "vreau să mă dezabonez", "Nu mai vreau mesaje", "Nu-mi mai trimiteți mesaje", "Opriți mesajele", "退订",
            "TD", "拒收", "R", "unsubscribe", "cancel", "回复TD退订", "我要退订", "不要再发了", "Désabonnez-moi",
            "stop, please", "STOP STOP",
            # Traditional Chinese (seeds 000 and 003: 傳 / 寄 / 簡訊 where Simplified says 发 / 短信), the
            # French "STOP PUB", Romanian "Oprește" alone and "anulare abonament".
            "不要再傳了", "請勿再傳訊息", "別再傳了", "不要再传了", "不要再寄簡訊給我", "取消簡訊", "請停止傳送", "STOP PUB",
            "stop pub svp", "Oprește", "Opriți!", "anulare abonament", "Vreau să anulez abonamentul",
            # hunt12: the letter the Chinese footer ("拒收请回复R") asks for, inside a longer reply; French
            "R 谢谢", "回复R", "r，谢谢", "TD谢谢", "请回复R", "Ne plus m'envoyer de SMS"]  # fmt: skip
OTHERS = ["don't stop the deals", "cancel my order please", "where is the bus stop", "我不想退订", "不用退订", "别退订我",
          "不拒收", "nu vreau să mă dezabonez", "nu mai am comenzi", "Pot să anulez comanda?", "Mai trimiteți oferte",
          "Should I reply STOP?", "2", "Y", "TDK", "Rd", "😀", "ＴＤＫ", "我不想退訂", "不要停止傳送", "pub", "Oprește comanda?",
          "nu anulați abonamentul", "R你好吗", "R 明天还有优惠吗", "TD 你们几点开门",
          # the footer's letters inside English chat are not keywords (they were: "r u ok?")
          "r u ok?", "R u there", "u r welcome", "ok r", "r u open now?"]  # fmt: skip


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


def _variants(text: str) -> list[str]:
    return [text, text.upper(), text.lower(), f"{text}.", f"{text}!!!", f"{text} 🛑", f"🙏 {text} 😡", f"  {text}\n ",
            _fullwidth(text), f"{text}\u200b"]  # fmt: skip


@pytest.mark.parametrize("text", OPT_OUTS)
def test_every_spelling_of_an_opt_out_is_one(text: str) -> None:
    k = Keywords()
    wrong = [v for v in _variants(text) if not isinstance(k.classify(v, "+40712345678"), OptOut)]
    assert not wrong


@pytest.mark.parametrize("text", OTHERS)
def test_a_non_opt_out_stays_a_message_in_every_spelling(text: str) -> None:
    k = Keywords()
    wrong = [(v, k.classify(v, "+8613800138000")) for v in _variants(text) if isinstance(k.classify(v, "+8613800138000"), OptOut)]
    assert not wrong
