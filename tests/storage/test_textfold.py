"""Accent folding and snippets (storage.textfold), on Vietnamese in both Unicode forms."""

from __future__ import annotations

import unicodedata

from storage.textfold import fold, fold_with_offsets, highlight

COMPOSED = "Cấu trúc dữ liệu: Đồ thị và cây."


def test_fold_with_offsets_maps_each_folded_character_to_its_original() -> None:
    for text in (COMPOSED, unicodedata.normalize("NFD", COMPOSED), "plain ASCII\x00text"):
        folded, origin = fold_with_offsets(text)
        assert folded == "".join(fold(ch) for ch in text)
        assert len(origin) == len(folded)
        for position, index in enumerate(origin):
            assert fold(text[index]) and folded[position] in fold(text[index])
    decomposed = unicodedata.normalize("NFD", COMPOSED)
    folded, origin = fold_with_offsets(decomposed)
    assert folded == "cau truc du lieu: do thi va cay."
    assert len(decomposed) > len(folded)  # the combining marks fold to nothing


def test_highlight_marks_words_typed_without_accents_in_either_form() -> None:
    assert highlight(COMPOSED, ["cau", "do"]) == "<mark>Cấu</mark> trúc dữ liệu: <mark>Đồ</mark> thị và cây."
    decomposed = unicodedata.normalize("NFD", COMPOSED)
    marked = highlight(decomposed, ["lieu"])
    assert f"<mark>{unicodedata.normalize('NFD', 'liệu')}</mark>" in marked


def test_highlight_without_terms_is_the_opening_words() -> None:
    text = "Ngăn xếp hoạt động theo nguyên tắc vào sau ra trước. " * 20
    snippet = highlight(text, [], width=60)
    assert "<mark>" not in snippet and text.startswith(snippet.removesuffix("…"))
    assert snippet.endswith("…") and len(snippet) <= 61 and not snippet.removesuffix("…").endswith(" ")


def test_the_fold_cache_stays_bounded_on_text_with_any_characters() -> None:
    from storage.textfold import _CHAR_FOLDS, MAX_CACHED_CHARS

    every = "".join(chr(code) for code in range(0x20, 0x20 + 3 * MAX_CACHED_CHARS) if not 0xD800 <= code < 0xE000)
    folded, origin = fold_with_offsets(every)
    assert folded == "".join(fold(ch) for ch in every) and len(origin) == len(folded)
    assert len(_CHAR_FOLDS) <= MAX_CACHED_CHARS
