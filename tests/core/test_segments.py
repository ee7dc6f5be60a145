import smpplib.gsm
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import segments as s

GSM_BASIC = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
GSM_EXT = "^{}\\[~]|€\f"
TEXTS = st.text(
    alphabet=st.one_of(
        st.sampled_from(GSM_BASIC), st.sampled_from(GSM_EXT), st.sampled_from("☃✓你好ąłž"),
        st.sampled_from(["😀", "🎉", "🏽"]),
    ),
    max_size=700,
)  # fmt: skip


def _decode(split):
    if split.encoding == s.GSM7:
        return s.decode_gsm7(b"".join(split.parts))
    return s.decode_ucs2(b"".join(split.parts))


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.booleans())
def test_split_roundtrips_and_agrees_with_plan(text, ref16):
    plan = s.plan(text, ref16=ref16)
    split = s.split(text, ref16=ref16)
    assert split.encoding == plan.encoding
    assert len(split.parts) == plan.segments
    assert _decode(split) == text
    single = 160 if plan.encoding == s.GSM7 else 70
    assert (plan.segments == 1) == (plan.units <= single)
    if plan.segments > 1:
        limit = s._PART[(plan.encoding, ref16)] * (1 if plan.encoding == s.GSM7 else 2)
        for part in split.parts:
            assert len(part) <= limit
            if plan.encoding == s.GSM7:
                assert s.decode_gsm7(part) is not None
                assert not s._ends_in_escape(part, 0, len(part)), "an escape pair straddles two parts"
            else:
                assert not 0xD8 <= part[-2] <= 0xDB, "a surrogate pair straddles two parts"


@given(st.binary(max_size=300))
def test_decode_gsm7_never_raises(data):
    assert isinstance(s.decode_gsm7(data), str)


@given(st.binary(max_size=200).map(lambda b: bytes(x & 0x7F for x in b)))
def test_pack_unpack_roundtrip(septets):
    assert s.unpack_septets(s.pack_septets(septets), len(septets)) == septets


# smpplib's table lacks the form feed and has '`' where TS 23.038 has '§' (0x5F).
@given(st.text(alphabet=st.sampled_from((GSM_BASIC + GSM_EXT).replace("\f", "").replace("§", "")), max_size=300))
def test_gsm_encoding_matches_smpplib(text):
    """smpplib's GSM 03.38 table is the reference for ours, where it follows the standard."""
    ref = smpplib.gsm.gsm_encode(text)
    assert s.encode_gsm7(text) == ref


def test_limits():
    assert s.plan("a" * 160).segments == 1
    assert s.plan("a" * 161).segments == 2
    assert s.plan("a" * 306).segments == 2 and s.plan("a" * 307).segments == 3
    assert s.plan("☃" * 70).segments == 1 and s.plan("☃" * 71).segments == 2
    assert s.plan("a" * 305, ref16=True).segments == 3  # 152 per part


def test_extension_costs_two_and_never_straddles():
    assert s.plan("€").units == 2
    assert s.plan("€" * 80).segments == 1
    for ch in "^{[":
        text = "a" * 152 + ch + "b" * 10  # the escape would be septet 153 of part 1
        split = s.split(text)
        assert [len(p) for p in split.parts] == [152, 12]
        assert s.plan(text).segments == 2


def test_emoji_at_a_part_boundary():
    text = "☃" * 66 + "😀" + "x" * 10
    split = s.split(text)
    assert len(split.parts[0]) == 132  # the pair moved whole to part 2
    assert _decode(split) == text


def test_smart_encoding():
    assert s.smart("“Hello” — ‘world’…") == '"Hello" - \'world\'...'
    assert s.is_gsm7(s.smart("Don’t miss it\u00a0today"))
    assert s.smart("你好 “x”") == "你好 “x”"  # a real non-GSM character: unchanged


def test_udh():
    assert s.udh_concat(0x42, 3, 1) == bytes([5, 0, 3, 0x42, 3, 1])
    assert s.udh_concat(0x1234, 2, 2, ref16=True) == bytes([6, 8, 4, 0x12, 0x34, 2, 2])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.sampled_from(GSM_BASIC), st.sampled_from(GSM_EXT), st.sampled_from("`\x7f\x1b\x00\t\x0b"),
                                  st.sampled_from("☃ąłž€"), st.characters()), max_size=60))  # fmt: skip
def test_plain_septets_is_no_ascii_special_and_one_septet_each(text):
    """The one scan that a chunk's bodies take first answers what the two scans it replaces
    answer together (a campaign's texts: "Chloé" is one septet a character)."""
    assert s.plain_septets(text) == (s.no_ascii_special(text) and s.one_septet_each(text))
    assert s.plain_septets(text) <= (s.plan(text).encoding == s.GSM7 and s.plan(text).units == len(text))
