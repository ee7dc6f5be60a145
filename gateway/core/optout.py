"""Does an inbound message revoke consent? Rules and word lists, nothing downloaded, pure.

The FCC's 2024 order (47 CFR 64.1200(a)(10), in force 2025-04-11) requires revocation "by any
reasonable means" to be honoured, and names STOP, QUIT, END, REVOKE, OPT OUT, CANCEL and
UNSUBSCRIBE as conclusive when sent as a reply. So a message is an opt-out when

1. a *clause* of it (split at sentence punctuation, then at commas) holds nothing but opt-out
   words of any supported language (``STOP``, ``baja``, ``abmelden``, ``стоп``, ``退订``...)
   plus filler (politeness, emphasis, "me", "all", "texts": ``stop please``, ``STOP STOP``,
   ``Unsubscribe me``, ``cancel all texts``, ``I want to cancel``) — *certain*;
2. it holds an opt-out *phrase* (``please stop texting me``, ``take me off your list``, ``no
   more messages``, ``no me envíen más``, ``keine SMS mehr``, ``больше не пишите``, ``不要再发``)
   that is not negated (``don't stop the deals``, ``no dejen de enviar ofertas`` stay ordinary
   messages) — *certain*;
3. it holds a weaker cue (``leave me alone``, ``wrong number``, ``not interested``) — *unsure*:
   the tenant's ``opt_out_uncertain`` decides (treat as opt-out, the default, or ask once).

Languages: en, es, pt, fr, de, it, nl, ro, ru, zh (also ja, ko, pl, tr conclusive words). The lists
are compared after ``fold`` (NFKD, casefold, accents dropped), so they are written naturally
here and folded once at import. ``tests/core/data/opt_out_corpus.txt`` is the labelled corpus the
rules are measured on (precision and recall, ``tests/core/test_opt_out_corpus.py``).
"""

from __future__ import annotations

import re
import unicodedata
from enum import Enum

__all__ = ["OptOutVerdict", "classify", "fold", "is_yes"]


class OptOutVerdict(Enum):
    NO = 0
    UNSURE = 1
    CERTAIN = 2


def fold(text: str) -> str:
    """NFKD, casefold, combining marks (accents) dropped; apostrophes removed (``don't`` ->
    ``dont``); every other non-letter/digit a space, except clause marks kept for ``_clauses``."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFKD", text).casefold():
        cat = unicodedata.category(ch)
        if cat[0] in "LN":
            out.append(ch)
        elif cat == "Mn":
            continue
        elif ch in "'’`´ʼ":
            continue
        elif ch in _CLAUSE_MARKS or ch in _SUB_MARKS:
            out.append(ch)
        else:
            out.append(" ")
    return "".join(out)


_CLAUSE_MARKS = frozenset(".!?;\n。！？；¿¡")
_SUB_MARKS = frozenset(",:，、：–—")
_SPLIT = re.compile(r"[.!?;\n。！？；¿¡]+")
_SUB_SPLIT = re.compile(r"[,:，、：–—]+")

# Words that alone (with filler) are a conclusive opt-out.
_STOP_WORDS = """
stop stopall quit end revoke optout cancel unsubscribe unsub unsuscribe unsubcribe remove stopp stops
baja bajame alto para parar pare paren cancelar cancela desuscribir desuscribirme darmedebaja basta detener salir
sair parem descadastrar descadastre descadastrem cancele chega
arret arrete arreter arretez desabonner desabonnement desinscrire desinscription desabonnez stopper
abmelden abbestellen austragen abmeldung kundigen abbrechen beenden
cancella cancellami disiscrivi disiscrivimi disiscrizione annulla smetti smettila
afmelden uitschrijven opzeggen
стоп отписаться отписка отписать отпишите отпишись хватит прекратить прекратите отменить отмена
退订 退訂 取消 退出 停止 td 退 配信停止 停止 解除 수신거부 그만 wypisz rezygnuje iptal dur
dezabonare dezabonez dezaboneaza dezabonati dezabonatima dezabonează opriti opreste
""".split()
_STOP_PAIRS = [("opt", "out"), ("stop", "all"), ("de", "baja"), ("me", "baja"), ("no", "more"), ("no", "mas"),
               ("i", "want", "out")]
# Filler: politeness, emphasis, pronouns, what is being stopped, "I want to".
_FILLER = set("""
please pls plz plse pleas pleeease kindly now right away asap immediately thanks thank you thx ty u ok okay
me us my i we it all everything just already again anymore more any sms text texts txt txts message messages
msg msgs these this them those said told say from your ur list lists want wanna would like id need to can could do
yes yeah so god damn dammit seriously oh hey hi hello sir madam and or
por favor porfa porfavor gracias ya de la el los las lista mi todo todos todas mensajes mas yo quiero deseo puede pueden puedes podrian ahora
obrigado obrigada agora mensagens quero pode podem
svp stp sil vous plait merci moi tout tous je veux voudrais les des mes pub pubs publicite publicites promo promos
bitte danke sofort jetzt alle nachrichten mich ich will mochte mehr
per grazie subito messaggi mi tutto tutti voglio vorrei
alsjeblieft aub dank bedankt nu alles berichten ik wil
пожалуиста спасибо все уже мне меня смс сообщения сообщении я хочу сеичас срочно рассылка рассылку рассылки
va rog multumesc ma vreau sa doresc imediat acum mesaje mesajele
""".split())
_NEG = frozenset("""dont not never cant cannot wont didnt doesnt shouldnt no nao nunca jamais jamas ne n pas
nicht nie kein keine non mai nu не нет 不 不要 别 別 勿""".split())


def _fold_pattern(pattern: str) -> str:
    """A pattern folded like text (accents, case) with its regex syntax left alone."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", pattern).casefold() if unicodedata.category(ch) != "Mn")


def _folded(words: str) -> set[str]:
    return {fold(w).strip() for w in words}


_STOP = _folded(_STOP_WORDS)
_FILL = _folded(_FILLER) - {""}
_NEGS = _folded(_NEG)


class _Rule:
    __slots__ = ("rx", "verdict", "negatable")

    def __init__(self, pattern: str, verdict: OptOutVerdict, negatable: bool) -> None:
        self.rx = re.compile(_fold_pattern(pattern))
        self.verdict = verdict
        self.negatable = negatable


_C, _U = OptOutVerdict.CERTAIN, OptOutVerdict.UNSURE
_OBJ = (r"(?:texts?|txts?|messages?|msgs?|sms|smses|notifications?|alerts?|ads|adverts?|advertising|advertisements?|"
        r"promos?|promotions?|offers|deals|marketing|spam|newsletters?|reminders?|updates|coupons|emails?)")
_CONTACT = r"(?:send|sending|text|texting|txt|txting|message|messaging|msg|msging|msgs|contact|contacting|spam|spamming|bother|bothering|harass|harassing|call|calling|email|emailing|write|writing|sms|smsing|hit)"
# (pattern on folded text with single spaces, verdict, negatable: a negation just before the
# match undoes it). Patterns are folded like the text, so accents may be written.
_RULES = [_Rule(p, v, n) for p, v, n in [
    # English
    (rf"\b(?:stop|quit|cease|end|halt|discontinue)(?: it)? {_CONTACT}\b", _C, True),
    (rf"\b(?:stop|quit|cease|end|halt|discontinue)(?: (?:all|the|these|those|your|this|ur|any|my|of|future))* {_OBJ}\b", _C, True),
    (r"\b(?:stop|quit) (?:receiving|getting|sending)\b", _C, True),
    (r"\bun ?subscrib(?:e|ing)\b|\bunsub\b|\bunsuscribe\b|\bunsubcribe\b", _C, True),
    (r"\bopt(?:ing)? (?:me |us )?out\b|\boptout\b|\bopt-out\b", _C, True),
    (r"\b(?:remove|delete|erase|drop) (?:me|us|my (?:number|phone|cell|mobile|contact|info)|this (?:number|phone))\b", _C, True),
    (r"\b(?:take|get|put) (?:me|us|my (?:number|phone|cell)|this number) (?:off|out of)\b", _C, True),
    (r"\b(?:be|get|been) (?:removed|taken off|unsubscribed)\b|\b(?:get|have) (?:me|my number|this number) (?:removed|unsubscribed|taken off)\b", _C, True),
    (r"\boff (?:of )?(?:your|the|this|ur) (?:list|mailing list|texting list|sms list|contact list)\b", _C, True),
    (r"\brevok(?:e|ing)\b|\bwithdraw (?:my )?consent\b", _C, True),
    (rf"\bcancel(?:l?ing)? (?:(?:my|the|this|all|these|your|of) )*(?:subscription|subscriptions|sub|{_OBJ})\b", _C, True),
    (rf"\bno (?:more|further|longer)(?: \w+)? {_OBJ}\b", _C, False),
    (rf"\b(?:dont|do not|never) (?:ever )?(?:{_CONTACT}) (?:me|us|to me|this number|my number|my phone|anymore|again|any more|me again)\b", _C, False),
    (rf"\b(?:dont|do not|never) (?:send|text|message) (?:me|us)\b", _C, False),
    (r"\b(?:dont|do not|no longer) (?:want|wish) (?:to )?(?:receive|get|any|these|more|your)\b", _C, False),
    (r"\b(?:want|wanna|like|need|wish) to (?:stop|quit|end) (?:receiving|getting)\b", _C, True),
    (r"\b(?:leave me alone|wrong number|not interested|no longer interested|never signed up|didnt sign up|did not sign up)\b", _U, False),
    # Spanish
    (r"\b(?:no|ya no) (?:me |nos )?(?:manden|mandes|mande|envien|envies|envie|escriban|escribas|escriba|contacten|contactes|molesten|molestes|vuelvan a|vuelvas a)\b", _C, False),
    (r"\bno (?:quiero|deseo) (?:recibir|mas|seguir recibiendo|mensajes|sms|publicidad|promociones)\b", _C, False),
    (r"\b(?:dejen|deja|dejar|paren|para|pare|parar|detener|detengan|deje|dejad) de (?:enviar|mandar|escribir|enviarme|mandarme|escribirme|molestar|molestarme|contactarme|enviarnos)", _C, True),
    (r"\b(?:dar|darme|darse|denme|dame|deme|doy|me doy|me dan) de baja\b|\bde baja\b", _C, True),
    (r"\b(?:cancelar|cancela|cancelen|cancelo|anular) (?:la |mi |las |los |el |esta |mis )?(?:suscripcion|mensajes|sms|notificaciones|alertas|promociones|publicidad)\b", _C, True),
    (r"\bno mas (?:mensajes|sms|publicidad|ofertas|promociones|notificaciones|spam)\b", _C, False),
    (r"\b(?:quitenme|quitarme|quitame|borrenme|borrarme|eliminenme|eliminarme|eliminame|sacarme|sacame|saquenme|desuscribanme|desuscribirme|desinscribirme)\b|\b(?:borrar|eliminar|quitar|borren|eliminen|quiten) mi numero\b", _C, True),
    (r"\b(?:numero equivocado|no me interesa|dejame en paz|dejenme en paz)\b", _U, False),
    # Portuguese
    (r"\b(?:parem|pare|parar|deixem|deixe|deixar|parem de me|pare de me) de (?:enviar|mandar|me enviar|me mandar|mandar me|enviar me|me contactar|me ligar|me incomodar|incomodar)", _C, True),
    (r"\b(?:parem|pare) de me (?:enviar|mandar|contactar|ligar|incomodar)", _C, True),
    (r"\bnao (?:me )?(?:enviem|envie|mandem|mande|contactem|contacte|liguem|incomodem) mais\b|\bnao quero (?:mais )?(?:receber|mensagens|sms|promocoes)\b|\bnao me mandem\b|\bnao me enviem\b", _C, False),
    (r"\b(?:cancelar|cancele|cancelem|cancelo) (?:a |minha |as |os |o )?(?:assinatura|inscricao|mensagens|sms|notificacoes|promocoes)\b", _C, True),
    (r"\b(?:descadastrar|descadastre|descadastrem|descadastro|desinscrever|sair da lista|me tire|me tirem|tirar meu numero|remover meu numero|remova meu numero|removam meu numero|me remova|me removam|me descadastre|me descadastrem)\b", _C, True),
    (r"\bchega de (?:mensagens|sms|spam|propaganda|promocoes)\b|\bsem mais mensagens\b", _C, False),
    (r"\b(?:numero errado|nao tenho interesse|me deixe em paz|me deixem em paz)\b", _U, False),
    # French
    (r"\b(?:arretez|arrete|arreter|cessez|stoppez|stop) (?:de |d ?)?(?:m ?|me |nous )?(?:envoyer|ecrire|contacter|spammer|harceler|deranger|appeler|texter)", _C, True),
    (r"\b(?:arretez|arrete|arreter|cessez|stoppez) (?:les |vos |ces |tous les |toutes les )?(?:sms|messages|envois|textos|pubs|publicites|promos|notifications)\b", _C, True),
    (r"\bne (?:m ?|me |nous )?(?:envoyez|ecrivez|contactez|ecris|envoie|contacte) plus\b|\bplus de (?:sms|messages|pub|pubs|publicite|textos|spam)\b|\bne (?:veux|souhaite) plus (?:recevoir|de (?:sms|messages|pubs?|publicites?|textos|notifications))\b|\bne plus recevoir\b|\bne (?:plus )?(?:m ?|me |nous )?(?:envoyer|ecrire|contacter) (?:plus )?(?:de |d )?(?:sms|messages|textos|pubs?|publicites?)\b|\bveux plus recevoir\b", _C, False),
    (r"\b(?:desabonner|desabonnez|desabonne|desabonnement|desinscrire|desinscrivez|desinscris|desinscription|retirez moi|supprimez moi|enlevez moi|supprimer mon numero|retirer mon numero|retirez mon numero|supprimez mon numero)\b", _C, True),
    (r"\b(?:mauvais numero|pas interesse|pas interessee|laissez moi tranquille|fichez moi la paix)\b", _U, False),
    # German
    (rf"\bkeine (?:\w+ )?(?:sms|nachrichten|werbung|mitteilungen|newsletter|angebote|texte|werbe sms|werbenachrichten|spam) mehr\b|\bbitte keine (?:sms|nachrichten|werbung|mitteilungen|werbe sms|spam)\b", _C, False),
    (r"\b(?:horen sie auf|hort auf|hor auf|aufhoren)\b.*\b(?:schreiben|senden|schicken|sms|nachrichten)\b", _C, True),
    (r"\b(?:abmelden|abbestellen|austragen|abmeldung|kundigen|kundigung|abbestellung|meine nummer loschen|nummer loschen|loschen sie meine nummer|entfernen sie meine nummer|nummer entfernen)\b", _C, True),
    (r"\b(?:schreiben|senden|schicken) sie mir (?:keine|nichts) mehr\b|\bnicht mehr (?:schreiben|senden|schicken|kontaktieren|anschreiben)\b|\bschreibt mir nicht mehr\b", _C, False),
    (r"\b(?:falsche nummer|kein interesse|lasst mich in ruhe|lassen sie mich in ruhe)\b", _U, False),
    # Italian
    (r"\b(?:smettete|smetti|smettila|smettetela|basta) (?:di )?(?:inviare|mandare|scrivere|inviarmi|mandarmi|scrivermi|contattarmi|disturbarmi)", _C, True),
    (r"\bnon (?:mi )?(?:inviate|mandate|scrivete|contattate|inviatemi|mandatemi|scrivetemi|contattatemi|mandare|inviare|scrivere) piu\b|\bnon voglio (?:piu )?ricevere\b", _C, False),
    (r"\b(?:disiscrivimi|disiscrivere|disiscrivermi|disiscrivetemi|cancellami|cancellatemi|rimuovetemi|rimuovimi|toglietemi|toglimi|annulla iscrizione|cancella iscrizione|cancellare iscrizione|disdire|disdetta|cancellare il mio numero|cancellate il mio numero)\b", _C, True),
    (r"\bbasta (?:messaggi|sms|spam|pubblicita)\b|\bniente piu (?:messaggi|sms)\b|\bbasta con (?:i messaggi|gli sms|la pubblicita)\b", _C, False),
    (r"\b(?:numero sbagliato|non mi interessa|lasciatemi in pace)\b", _U, False),
    # Dutch
    (r"\b(?:stuur|stuurt|sms) (?:me |mij )?geen (?:berichten|sms|smsjes) meer\b|\bgeen (?:berichten|sms|smsjes|reclame) meer\b|\b(?:afmelden|uitschrijven|meld me af|schrijf me uit)\b", _C, False),
    # Romanian (seed language; folded: ă â î ș ț are a a i s t; "nu-mi" is "nu mi")
    (r"\bnu (?:mai )?(?:vreau|doresc) (?:sa (?:mai )?(?:primesc|primim)|mesaje|mesajele|sms|reclame|oferte|notificari)\b", _C, False),
    (r"\bnu (?:imi |mi |ne )?mai (?:trimiteti|trimite|trimiteti mi|scrieti|scrie|contactati)\b", _C, False),
    (r"\b(?:opriti|opreste|incetati|stop) (?:mesajele|mesaje|sms urile|smsurile|sms|trimiterea|notificarile|reclamele)\b", _C, True),
    (r"\b(?:dezabonati ma|dezaboneaza ma|dezabonare|dezabonez|ma dezabonez|scoateti ma de pe lista|scoate ma de pe lista|stergeti ma|sterge ma|stergeti mi numarul|stergeti numarul meu)\b", _C, True),
    (r"\b(?:anulare|anulati|anuleaza|anulez|vreau sa anulez|anulati mi|anuleaza mi) (?:abonamentul|abonament|abonarea|inscrierea)\b", _C, True),
    (r"\b(?:numar gresit|nu ma intereseaza|lasati ma in pace)\b", _U, False),
    # Russian (folded: й is и, ё is е)
    (r"\b(?:хватит|прекратите|перестаньте|прекрати|перестань) (?:мне )?(?:присылать|слать|писать|отправлять|спамить|звонить|беспокоить)", _C, True),
    (r"\b(?:хватит|прекратите|прекрати) (?:спама|смс|сообщении|рассылки|рассылку|спамить)\b", _C, True),
    (r"\bне (?:присылаите|пишите|отправляите|звоните|беспокоите|шлите) (?:мне |больше )*|\bбольше не (?:присылаите|пишите|отправляите|шлите|беспокоите)\b", _C, False),
    (r"\b(?:отпишите|отписаться|отпишись|отписка|отпишусь|отписываюсь|удалите мои номер|удалите меня|исключите меня|отменить подписку|отмените подписку|отказ от рассылки|отказываюсь от рассылки|отказаться от рассылки|отключите рассылку|отключить рассылку)\b", _C, True),
    (r"\b(?:не тот номер|неправильныи номер|не интересно|оставьте меня в покое)\b", _U, False),
]]  # fmt: skip
# Chinese and Japanese: no spaces; substrings of the compact text.
_CJK_CERTAIN = [_fold_pattern(w) for w in """退订 退訂 取消订阅 取消訂閱 不要再发 不要再發 别再发 別再發 停止发送 停止發送 请勿再发 請勿再發
不要发了 不要給我發 不要给我发 别给我发 别发了 拒收 退出订阅 取消短信 不想再收到 不再接收 停止订阅 停止推送 取消推送 不要再给我发
配信停止 配信解除 送らないで 登録解除 수신거부 보내지마 보내지 마
不要再传 不要再傳 别再传 別再傳 请勿再传 請勿再傳 不要传了 不要傳了 别传了 別傳了 停止传送 停止傳送 不要再寄 別再寄 请勿再寄 請勿再寄
取消簡訊 取消短訊 拒收簡訊 不要再發簡訊 不再接收簡訊""".split()]
_CJK_UNSURE = [_fold_pattern(w) for w in "打错了 号码错了 不感兴趣 没兴趣".split()]
# The letters Chinese opt-out footers ask for ("拒收请回复R", "回复TD退订"), in a reply whose other
# characters are only Chinese filler ("R 谢谢", "回复R", "TD谢谢"). Alone they are keywords
# (keywords.DEFAULT_OPT_OUT); in English they are not opt-out words ("r u open?").
_FOOTER_LETTERS = frozenset({"r", "td"})
_CJK_FILLER = tuple(sorted((_fold_pattern(w) for w in """谢谢 謝謝 谢了 謝了 多谢 多謝 感谢 感謝 麻烦 麻煩 一下 请 請 回复 回覆
我要 我 要 了 吧 啊 呀 哦 嗯 的 好的 好 你好 您好""".split()), key=len, reverse=True))
_LATIN = re.compile(r"[a-z]+")
_CJK_CHAR = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_CJK_NEG = ("不要停止", "别停止", "不要取消", "别取消", "不要退订", "別停止")
# What negates a CJK phrase right before it (folded like the phrases).
_CJK_NEGATORS = tuple(_fold_pattern(w) for w in "不想 不要 不用 不会 不會 不需要 无需 無需 不必 不 别 別 没 沒".split())
_YES = _folded("yes y yeah yep yup ya si sí oui ja sim да 是 是的 好的 はい 네".split())


def _clauses(folded: str) -> list[list[str]]:
    out = []
    for clause in _SPLIT.split(folded):
        subs = _SUB_SPLIT.split(clause)
        out += [s.split() for s in subs if s.strip()]
    return out


def _pure(words: list[str], extra: frozenset[str]) -> bool:
    """Only opt-out words and filler, at least one opt-out word, no negation."""
    found = False
    i = 0
    while i < len(words):
        w = words[i]
        pair = next((p for p in _STOP_PAIRS if tuple(words[i : i + len(p)]) == p), None)
        if pair is not None:
            found, i = True, i + len(pair)
            continue
        if w in _STOP or w in extra:
            found = True
        elif w not in _FILL or (not found and w in _NEGS):  # "nu" is Dutch filler after ("stop nu")
            return False  # and a Romanian negation before ("nu dezabonare")
        i += 1
    return found


def _cjk_negated(compact: str, start: int) -> bool:
    """Is the CJK phrase at ``start`` negated by what just precedes it ("我不想退订": I do not want to
    unsubscribe; "不用退订", "别退订")?"""
    before = compact[max(0, start - 3) : start]
    return any(before.endswith(n) for n in _CJK_NEGATORS)


def _negated(text: str, start: int) -> bool:
    before = text[:start].split()[-3:]
    return any(w in _NEGS for w in before)


def classify(text: str, extra: frozenset[str] = frozenset()) -> tuple[OptOutVerdict, str]:
    """(verdict, what matched) for ``text``. ``extra``: a tenant's own opt-out words (folded,
    single words) that count as conclusive too."""
    folded = fold(text)
    if len(folded) > 2000:
        folded = folded[:2000]
    compact = "".join(folded.split())
    for clause in _clauses(folded):
        if _pure(clause, extra):
            return OptOutVerdict.CERTAIN, " ".join(w for w in clause if w not in _FILL) or clause[0]
    plain = " ".join(_SPLIT.sub(" . ", _SUB_SPLIT.sub(" ", folded)).split())
    best: tuple[OptOutVerdict, str] = (OptOutVerdict.NO, "")
    for rule in _RULES:
        for m in rule.rx.finditer(plain):
            if rule.negatable and _negated(plain, m.start()):
                continue
            if rule.verdict is OptOutVerdict.CERTAIN:
                return rule.verdict, m.group().strip()
            best = (rule.verdict, m.group().strip())
    if not any(n in compact for n in _CJK_NEG):
        for w in _CJK_CERTAIN:
            at = compact.find(w)
            while at >= 0:
                if not _cjk_negated(compact, at):
                    return OptOutVerdict.CERTAIN, w
                at = compact.find(w, at + 1)
    if best[0] is OptOutVerdict.NO and (letters := _footer_letters(compact)):
        return OptOutVerdict.CERTAIN, letters
    if best[0] is OptOutVerdict.NO:
        for w in _CJK_UNSURE:
            if w in compact:
                return OptOutVerdict.UNSURE, w
    return best


def _footer_letters(compact: str) -> str:
    """``R`` / ``TD`` in a Chinese reply that says nothing else ("R 谢谢", "回复R"); "" otherwise."""
    if not _CJK_CHAR.search(compact):
        return ""
    words = _LATIN.findall(compact)
    if not words or any(w not in _FOOTER_LETTERS for w in words):
        return ""
    rest = _LATIN.sub("", compact)
    for w in _CJK_FILLER:
        rest = rest.replace(w, "")
    rest = "".join(ch for ch in rest if ch not in _CLAUSE_MARKS and ch not in _SUB_MARKS)
    return words[0] if not rest else ""


def is_yes(text: str) -> bool:
    """A bare "yes" in a supported language (with filler): the answer to a pending question."""
    words = [w for clause in _clauses(fold(text)) for w in clause]
    return any(w in _YES for w in words) and all(w in _YES or (w in _FILL and w not in _STOP) for w in words)
