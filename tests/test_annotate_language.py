"""LanguageAnnotator: clear sentences in many languages, code is not a language, and Language Confusion accuracy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from treasure.annotate.base import Annotator
from treasure.annotate.language import (
    ISO_TO_LANGUAGE,
    MAX_CHARS_PER_TURN,
    LanguageAnnotator,
    conversation_text,
    detect_language,
    identify,
    prose,
)
from treasure.taxonomy import load_taxonomy

DATA = Path(__file__).parents[2] / "shared" / "data" / "multilingual" / "language_confusion" / "monolingual"
# Measured on all 2,400 prompts: 99.96% (bench/RESULTS_langid.md); the test reads a sample of them.
MIN_ACCURACY = 0.98

SENTENCES = {
    "English": "Could you explain how photosynthesis works in plants and why it matters for life on Earth?",
    "French": "Pouvez-vous m'expliquer comment fonctionne la photosynthèse chez les plantes, s'il vous plaît ?",
    "German": "Kannst du mir bitte erklären, wie die Photosynthese bei Pflanzen funktioniert?",
    "Spanish": "¿Puedes explicarme cómo funciona la fotosíntesis en las plantas y por qué es importante?",
    "Italian": "Potresti spiegarmi come funziona la fotosintesi nelle piante e perché è importante?",
    "Portuguese": "Você pode me explicar como funciona a fotossíntese nas plantas e por que ela é importante?",
    "Dutch": "Kun je uitleggen hoe fotosynthese in planten werkt en waarom het belangrijk is voor het leven?",
    "Polish": "Czy możesz wyjaśnić, jak działa fotosynteza u roślin i dlaczego jest ona tak ważna?",
    "Russian": "Можешь объяснить, как работает фотосинтез у растений и почему он так важен для жизни?",
    "Ukrainian": "Чи можеш ти пояснити, як працює фотосинтез у рослин і чому він такий важливий для життя?",
    "Greek": "Μπορείς να μου εξηγήσεις πώς λειτουργεί η φωτοσύνθεση στα φυτά και γιατί είναι σημαντική;",
    "Arabic": "هل يمكنك أن تشرح لي كيف تعمل عملية البناء الضوئي في النباتات ولماذا هي مهمة للحياة؟",
    "Hebrew": "האם תוכל להסביר לי איך פוטוסינתזה עובדת בצמחים ולמה היא חשובה לחיים על פני כדור הארץ?",
    "Persian": "می‌توانی توضیح بدهی که فتوسنتز در گیاهان چگونه کار می‌کند و چرا برای زندگی مهم است؟",
    "Hindi": "क्या आप समझा सकते हैं कि पौधों में प्रकाश संश्लेषण कैसे काम करता है और यह क्यों महत्वपूर्ण है?",
    "Chinese": "你能解释一下植物的光合作用是如何进行的，以及它为什么对地球上的生命如此重要吗？",
    "Japanese": "植物の光合成がどのように働くのか、そしてなぜそれが地球上の生命にとって重要なのか説明してください。",
    "Korean": "식물의 광합성이 어떻게 작동하는지, 그리고 왜 지구의 생명에 중요한지 설명해 주시겠어요?",
    "Turkish": "Bitkilerde fotosentezin nasıl işlediğini ve neden bu kadar önemli olduğunu açıklayabilir misin?",
    "Vietnamese": "Bạn có thể giải thích quá trình quang hợp ở thực vật diễn ra như thế nào và tại sao nó quan trọng không?",
    "Indonesian": "Bisakah kamu menjelaskan bagaimana fotosintesis bekerja pada tumbuhan dan mengapa itu penting?",
    "Czech": "Můžeš mi vysvětlit, jak funguje fotosyntéza u rostlin a proč je tak důležitá pro život?",
    "Romanian": "Poți să-mi explici cum funcționează fotosinteza la plante și de ce este atât de importantă?",
}


def rec(user: str, response: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}],
        "markers": {},
    }


def test_languages_match_the_taxonomy():
    assert set(ISO_TO_LANGUAGE.values()) == set(load_taxonomy("paper")["language"].values)
    assert set(SENTENCES) == set(ISO_TO_LANGUAGE.values())


def test_is_an_annotator():
    ann = LanguageAnnotator()
    assert isinstance(ann, Annotator)
    assert ann.name == "language:py3langid" and ann.categories == ("language",)


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_clear_sentences(language):
    assert detect_language(SENTENCES[language]) == language


def test_annotate_reads_user_turn_and_response():
    records = [
        rec(SENTENCES["French"], "Bien sûr ! La photosynthèse transforme la lumière en énergie chimique.")
    ]
    records.append(
        rec(SENTENCES["Korean"], "물론입니다. 광합성은 빛 에너지를 화학 에너지로 바꾸는 과정입니다.")
    )
    assert LanguageAnnotator().annotate(records) == [{"language": "French"}, {"language": "Korean"}]


def test_code_does_not_count():
    # A German question, an answer that is mostly English-keyword code: the prose decides.
    answer = (
        "Hier ist eine einfache Lösung für dein Problem, die Liste wird sortiert:\n\n"
        "```python\nimport sys\n\ndef sort_items(items):\n    return sorted(items, key=lambda x: x.name)\n"
        "print(sort_items(sys.argv))\n```\n\nDie Funktion gibt eine neue sortierte Liste zurück."
    )
    out = LanguageAnnotator().annotate([rec("Wie sortiere ich eine Liste in Python?", answer)])
    assert out == [{"language": "German"}]
    assert "import" not in conversation_text(rec("Wie?", answer))


@pytest.mark.parametrize(
    "text",
    [
        "```python\nfor i in range(10):\n    print(i)\n```",
        '{\n  "a": [1, 2, 3]\n}',
        "x = foo(bar[0]) + baz->qux;",
        "12345 67890 3.14",
        "🙂🙂🙂",
        "",
    ],
)
def test_code_only_text_is_left_out(text):
    # Decision: code, numbers and emoji carry no natural language, so no marker (not "English" by default).
    assert detect_language(text) is None
    assert LanguageAnnotator().annotate([rec(text or "?", text or "...")]) == [{}]


@pytest.mark.parametrize(
    "text",
    [
        "Idag ska jag gå till affären och köpa frukt och grönsaker till min familj.",  # Swedish
        "Leo ninaenda sokoni kununua matunda na mboga kwa ajili ya familia yangu.",  # Swahili
        "Tänään menen kauppaan ostamaan hedelmiä ja vihanneksia perheelleni.",  # Finnish
        "Ma elmegyek a boltba gyümölcsöt és zöldséget venni a családomnak.",  # Hungarian
        "วันนี้ฉันจะไปซื้อผลไม้และผักที่ร้านสำหรับครอบครัวของฉัน",  # Thai
    ],
)
def test_languages_outside_the_taxonomy_are_left_out(text):
    assert identify(text)[0] is None


def test_prose_is_bounded():
    text = "Bonjour tout le monde. " * 10_000
    assert len(prose(text)) <= MAX_CHARS_PER_TURN
    assert detect_language(text) == "French"


def _language_confusion_sample(per_file: int = 25) -> list[tuple[str, str]]:
    rows = []
    for path in sorted(DATA.glob("*/*.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                if i >= per_file:
                    break
                rows.append((row["prompt"], ISO_TO_LANGUAGE[row["language"].strip()]))
    return rows


@pytest.mark.skipif(not DATA.is_dir(), reason="shared/data/multilingual/language_confusion not present")
def test_language_confusion_accuracy():
    rows = _language_confusion_sample()
    assert len(rows) >= 400
    records = [rec(prompt, prompt) for prompt, _ in rows]
    out = LanguageAnnotator().annotate(records)
    accuracy = sum(o.get("language") == gold for o, (_, gold) in zip(out, rows, strict=True)) / len(rows)
    assert accuracy >= MIN_ACCURACY, accuracy


def test_english_fast_path_allows_typographic_punctuation():
    text = "It’s the best way to learn — you don’t need anything else, and that’s what they said about it."
    assert identify(text) == ("English", 1.0)
    # Non-ASCII letters turn it off: the model decides.
    assert identify("Это лучший способ учиться, и это то, что они сказали об этом, the end.")[0] == "Russian"


@pytest.mark.parametrize("text", ["a b c", "lol", "- x\n" * 20, "hmm ok"])
def test_letter_junk_is_left_out(text):
    assert identify(text)[0] is None
