"""Captions of MiniWorld scenes from templates: English (canonical and paraphrased), German,
French, Spanish, Italian and Chinese.

``describe`` is the deterministic core: a scene plus explicit wording choices gives one text.
``caption`` draws the wording choices from a generator; ``caption_mix`` also draws the language
and whether to paraphrase, for training data (so non-English prompts reach the concepts, as they
do in real models).

Canonical English words: shapes ``circle, square, triangle, cross``; colours ``red, green, blue,
yellow``; styles ``striped`` / ``with stripes``, ``dotted`` / ``with dots``, ``checkered`` /
``with a checker pattern``; the attribute ``with a white spot``; backgrounds ``on a white
background`` / ``in front of a white background``. Paraphrases never use those concept words
(a cross is a "plus sign", stripes are "bands", the spot is a "pale patch" ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from igmu.miniworld.world import Scene

LANGUAGES = ("en", "de", "fr", "es", "it", "zh")
PARTS = ("shape", "colour", "style", "attribute", "background")
STYLE_FORMS = ("adj", "with")
BACKGROUND_FORMS = (None, "on", "in_front")

# Probabilities of caption_mix: (language, paraphrase).
DEFAULT_MIX: dict[tuple[str, bool], float] = {
    ("en", False): 0.55,
    ("en", True): 0.15,
    ("de", False): 0.06,
    ("fr", False): 0.06,
    ("es", False): 0.06,
    ("it", False): 0.06,
    ("zh", False): 0.06,
}

# ---------------------------------------------------------------------------------------------
# English
# ---------------------------------------------------------------------------------------------
EN_SHAPE = {"circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross"}
EN_STYLE_ADJ = {"stripes": "striped", "dots": "dotted", "checker": "checkered"}
EN_STYLE_WITH = {"stripes": "stripes", "dots": "dots", "checker": "a checker pattern"}
EN_SPOT = ("a white spot", "a white spot in the middle")
EN_BACKGROUND = {"on": "on a {bg} background", "in_front": "in front of a {bg} background"}

# Paraphrases: none of them contains a canonical concept word.
EN_PARA_SHAPE = {
    "circle": ("disc", "round shape"),
    "square": ("four-sided block", "box shape"),
    "triangle": ("three-sided shape", "wedge"),
    "cross": ("plus sign", "plus-shaped figure"),
}
EN_PARA_COLOUR = {
    "red": ("scarlet", "crimson"),
    "green": ("emerald", "jade"),
    "blue": ("azure", "cobalt"),
    "yellow": ("golden", "lemon-coloured"),
}
EN_PARA_STYLE_ADJ = {"stripes": "banded", "dots": "speckled", "checker": "chessboard-patterned"}
EN_PARA_STYLE_WITH = {
    "stripes": ("horizontal bands", "parallel dark bars"),
    "dots": ("small dark specks", "a sprinkling of dark flecks"),
    "checker": ("a chessboard pattern", "alternating dark and light tiles"),
}
EN_PARA_SPOT = (
    "a small pale patch in the middle",
    "a bright milky blotch at its centre",
    "a little snowy mark at its heart",
)
EN_PARA_BACKGROUND = {
    "white": ("on a pale backdrop", "against a snowy backdrop"),
    "grey": ("on an ash-coloured backdrop", "against a dull slate backdrop"),
    "black": ("on a dark backdrop", "against an inky backdrop"),
}

# ---------------------------------------------------------------------------------------------
# German: nouns with gender; adjectives take the strong nominative ending after "ein".
# ---------------------------------------------------------------------------------------------
DE_SHAPE = {
    "circle": ("Kreis", "m"),
    "square": ("Quadrat", "n"),
    "triangle": ("Dreieck", "n"),
    "cross": ("Kreuz", "n"),
}
DE_COLOUR = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"}
DE_STYLE_ADJ = {"stripes": "gestreift", "dots": "gepunktet", "checker": "kariert"}
DE_STYLE_WITH = {"stripes": "Streifen", "dots": "Punkten", "checker": "Karomuster"}
DE_SPOT = "einem weißen Fleck"
DE_BACKGROUND = {"white": "weißem", "grey": "grauem", "black": "schwarzem"}
DE_BACKGROUND_FORM = {"on": "auf {bg} Hintergrund", "in_front": "vor {bg} Hintergrund"}
DE_ENDING = {"m": "er", "n": "es"}

# French: adjectives follow the noun and agree in gender.
FR_SHAPE = {
    "circle": ("cercle", "m"),
    "square": ("carré", "m"),
    "triangle": ("triangle", "m"),
    "cross": ("croix", "f"),
}
FR_COLOUR = {
    "red": ("rouge", "rouge"),
    "green": ("vert", "verte"),
    "blue": ("bleu", "bleue"),
    "yellow": ("jaune", "jaune"),
}
FR_STYLE_ADJ = {
    "stripes": ("rayé", "rayée"),
    "dots": ("moucheté", "mouchetée"),
    "checker": ("quadrillé", "quadrillée"),
}
FR_STYLE_WITH = {"stripes": "à rayures", "dots": "à pois", "checker": "à carreaux"}
FR_SPOT = "avec une tache blanche"
FR_BACKGROUND = {"white": "blanc", "grey": "gris", "black": "noir"}
FR_BACKGROUND_FORM = {"on": "sur fond {bg}", "in_front": "devant un fond {bg}"}

# Spanish.
ES_SHAPE = {
    "circle": ("círculo", "m"),
    "square": ("cuadrado", "m"),
    "triangle": ("triángulo", "m"),
    "cross": ("cruz", "f"),
}
ES_COLOUR = {
    "red": ("rojo", "roja"),
    "green": ("verde", "verde"),
    "blue": ("azul", "azul"),
    "yellow": ("amarillo", "amarilla"),
}
ES_STYLE_ADJ = {
    "stripes": ("rayado", "rayada"),
    "dots": ("moteado", "moteada"),
    "checker": ("cuadriculado", "cuadriculada"),
}
ES_STYLE_WITH = {"stripes": "a rayas", "dots": "de lunares", "checker": "a cuadros"}
ES_SPOT = "con una mancha blanca"
ES_BACKGROUND = {"white": "blanco", "grey": "gris", "black": "negro"}
ES_BACKGROUND_FORM = {"on": "sobre fondo {bg}", "in_front": "delante de un fondo {bg}"}

# Italian.
IT_SHAPE = {
    "circle": ("cerchio", "m"),
    "square": ("quadrato", "m"),
    "triangle": ("triangolo", "m"),
    "cross": ("croce", "f"),
}
IT_COLOUR = {
    "red": ("rosso", "rossa"),
    "green": ("verde", "verde"),
    "blue": ("blu", "blu"),
    "yellow": ("giallo", "gialla"),
}
IT_STYLE_ADJ = {
    "stripes": ("rigato", "rigata"),
    "dots": ("puntinato", "puntinata"),
    "checker": ("quadrettato", "quadrettata"),
}
IT_STYLE_WITH = {"stripes": "a righe", "dots": "a pois", "checker": "a scacchi"}
IT_SPOT = "con una macchia bianca"
IT_BACKGROUND = {"white": "bianco", "grey": "grigio", "black": "nero"}
IT_BACKGROUND_FORM = {"on": "su sfondo {bg}", "in_front": "davanti a uno sfondo {bg}"}

# Chinese: "一个" + modifiers + colour + shape; the spot and background follow after commas.
ZH_SHAPE = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字形"}
ZH_COLOUR = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
ZH_STYLE_ADJ = {"stripes": "带条纹的", "dots": "带波点的", "checker": "带格子图案的"}
ZH_STYLE_WITH = {"stripes": "有条纹", "dots": "有波点", "checker": "有格子图案"}
ZH_SPOT = "中间有一个白色斑点"
ZH_BACKGROUND = {"white": "白色背景", "grey": "灰色背景", "black": "黑色背景"}

# The words that name each concept in each language (for checks and for task files).
CONCEPT_WORDS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "en": {
        "shape": {k: (v,) for k, v in EN_SHAPE.items()},
        "colour": {k: (k,) for k in ("red", "green", "blue", "yellow")},
        "style": {k: (EN_STYLE_ADJ[k], EN_STYLE_WITH[k]) for k in EN_STYLE_ADJ},
        "attribute": {"spot": ("white spot",)},
    },
    "de": {
        "shape": {k: (v[0],) for k, v in DE_SHAPE.items()},
        "colour": {k: (v,) for k, v in DE_COLOUR.items()},
        "style": {k: (DE_STYLE_ADJ[k], DE_STYLE_WITH[k]) for k in DE_STYLE_ADJ},
        "attribute": {"spot": ("Fleck",)},
    },
    "fr": {
        "shape": {k: (v[0],) for k, v in FR_SHAPE.items()},
        "colour": {k: v for k, v in FR_COLOUR.items()},
        "style": {k: (*FR_STYLE_ADJ[k], FR_STYLE_WITH[k]) for k in FR_STYLE_ADJ},
        "attribute": {"spot": ("tache blanche",)},
    },
    "es": {
        "shape": {k: (v[0],) for k, v in ES_SHAPE.items()},
        "colour": {k: v for k, v in ES_COLOUR.items()},
        "style": {k: (*ES_STYLE_ADJ[k], ES_STYLE_WITH[k]) for k in ES_STYLE_ADJ},
        "attribute": {"spot": ("mancha blanca",)},
    },
    "it": {
        "shape": {k: (v[0],) for k, v in IT_SHAPE.items()},
        "colour": {k: v for k, v in IT_COLOUR.items()},
        "style": {k: (*IT_STYLE_ADJ[k], IT_STYLE_WITH[k]) for k in IT_STYLE_ADJ},
        "attribute": {"spot": ("macchia bianca",)},
    },
    "zh": {
        "shape": {k: (v,) for k, v in ZH_SHAPE.items()},
        "colour": {k: (v,) for k, v in ZH_COLOUR.items()},
        "style": {k: (ZH_STYLE_ADJ[k][1:-1],) for k in ZH_STYLE_ADJ},  # 条纹, 波点, 格子图案
        "attribute": {"spot": ("白色斑点",)},
    },
}


@dataclass(frozen=True)
class Wording:
    """Explicit wording choices; ``variant`` picks among synonyms (paraphrases, spot phrases)."""

    style_form: str = "adj"  # "adj": "a striped red circle"; "with": "a red circle with stripes"
    background_form: str | None = "on"  # None: no background; "on" / "in_front"
    variant: int = 0
    plain_word: bool = False  # say "plain" for a plain subject (English canonical only)

    def __post_init__(self) -> None:
        if self.style_form not in STYLE_FORMS:
            raise ValueError(f"Wording.style_form must be one of {STYLE_FORMS}")
        if self.background_form not in BACKGROUND_FORMS:
            raise ValueError(f"Wording.background_form must be one of {BACKGROUND_FORMS}")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _paraphrased_parts(paraphrase: bool | Iterable[str]) -> frozenset[str]:
    if paraphrase is True:
        return frozenset(PARTS)
    if paraphrase is False or paraphrase is None:
        return frozenset()
    parts = frozenset(paraphrase)
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"paraphrase parts must be among {PARTS}, got {sorted(unknown)}")
    return parts


def _pick(options: tuple[str, ...], variant: int) -> str:
    return options[variant % len(options)]


def _describe_en(scene: Scene, wording: Wording, para: frozenset[str]) -> str:
    v = wording.variant
    shape = _pick(EN_PARA_SHAPE[scene.shape], v) if "shape" in para else EN_SHAPE[scene.shape]
    colour = _pick(EN_PARA_COLOUR[scene.colour], v) if "colour" in para else scene.colour
    adjectives = []
    withs = []
    if scene.style != "plain":
        if wording.style_form == "adj":
            table = EN_PARA_STYLE_ADJ if "style" in para else EN_STYLE_ADJ
            adjectives.append(table[scene.style])
        elif "style" in para:
            withs.append(_pick(EN_PARA_STYLE_WITH[scene.style], v))
        else:
            withs.append(EN_STYLE_WITH[scene.style])
    elif wording.plain_word and "style" not in para:
        adjectives.append("plain")
    if scene.attribute:
        withs.append(_pick(EN_PARA_SPOT if "attribute" in para else EN_SPOT, v))
    noun_phrase = " ".join([*adjectives, colour, shape])
    text = f"{_article(noun_phrase)} {noun_phrase}"
    if withs:
        text += " with " + " and ".join(withs)
    if wording.background_form is not None:
        if "background" in para:
            text += " " + _pick(EN_PARA_BACKGROUND[scene.background], v)
        else:
            text += " " + EN_BACKGROUND[wording.background_form].format(bg=scene.background)
    return text


def _describe_de(scene: Scene, wording: Wording) -> str:
    noun, gender = DE_SHAPE[scene.shape]
    ending = DE_ENDING[gender]
    adjectives = []
    withs = []
    if scene.style != "plain":
        if wording.style_form == "adj":
            adjectives.append(DE_STYLE_ADJ[scene.style] + ending)
        else:
            withs.append(DE_STYLE_WITH[scene.style])
    adjectives.append(DE_COLOUR[scene.colour] + ending)
    if scene.attribute:
        withs.append(DE_SPOT)
    text = " ".join(["ein", *adjectives, noun])
    if withs:
        text += " mit " + " und ".join(withs)
    if wording.background_form is not None:
        bg = DE_BACKGROUND[scene.background]
        text += " " + DE_BACKGROUND_FORM[wording.background_form].format(bg=bg)
    return text


def _describe_romance(
    scene: Scene,
    wording: Wording,
    shapes: Mapping[str, tuple[str, str]],
    colours: Mapping[str, tuple[str, str]],
    style_adj: Mapping[str, tuple[str, str]],
    style_with: Mapping[str, str],
    spot: str,
    backgrounds: Mapping[str, str],
    background_forms: Mapping[str, str],
    articles: tuple[str, str],
) -> str:
    noun, gender = shapes[scene.shape]
    g = 0 if gender == "m" else 1
    words = [articles[g], noun, colours[scene.colour][g]]
    if scene.style != "plain":
        if wording.style_form == "adj":
            words.append(style_adj[scene.style][g])
        else:
            words.append(style_with[scene.style])
    if scene.attribute:
        words.append(spot)
    if wording.background_form is not None:
        bg = backgrounds[scene.background]
        words.append(background_forms[wording.background_form].format(bg=bg))
    return " ".join(words)


def _describe_zh(scene: Scene, wording: Wording) -> str:
    colour, shape = ZH_COLOUR[scene.colour], ZH_SHAPE[scene.shape]
    text = "一个"
    extras = []
    if scene.style != "plain":
        if wording.style_form == "adj":
            text += ZH_STYLE_ADJ[scene.style]
        else:
            extras.append(ZH_STYLE_WITH[scene.style])
    text += colour + shape
    if scene.attribute:
        extras.append(ZH_SPOT)
    if wording.background_form is not None:
        extras.append(ZH_BACKGROUND[scene.background])
    return "，".join([text, *extras])


def describe(
    scene: Scene,
    language: str = "en",
    wording: Wording | None = None,
    paraphrase: bool | Iterable[str] = False,
) -> str:
    """One caption, fully determined by its arguments.

    ``paraphrase``: True paraphrases every part; a collection of part names (``shape``,
    ``colour``, ``style``, ``attribute``, ``background``) paraphrases just those. Paraphrases
    exist in English only.
    """
    wording = wording or Wording()
    para = _paraphrased_parts(paraphrase)
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if para and language != "en":
        raise ValueError("paraphrased captions exist in English only")
    if language == "en":
        return _describe_en(scene, wording, para)
    if language == "de":
        return _describe_de(scene, wording)
    if language == "zh":
        return _describe_zh(scene, wording)
    tables = {
        "fr": (
            FR_SHAPE,
            FR_COLOUR,
            FR_STYLE_ADJ,
            FR_STYLE_WITH,
            FR_SPOT,
            FR_BACKGROUND,
            FR_BACKGROUND_FORM,
            ("un", "une"),
        ),
        "es": (
            ES_SHAPE,
            ES_COLOUR,
            ES_STYLE_ADJ,
            ES_STYLE_WITH,
            ES_SPOT,
            ES_BACKGROUND,
            ES_BACKGROUND_FORM,
            ("un", "una"),
        ),
        "it": (
            IT_SHAPE,
            IT_COLOUR,
            IT_STYLE_ADJ,
            IT_STYLE_WITH,
            IT_SPOT,
            IT_BACKGROUND,
            IT_BACKGROUND_FORM,
            ("un", "una"),
        ),
    }
    return _describe_romance(scene, wording, *tables[language])


def random_wording(rng: np.random.Generator) -> Wording:
    """Style form 50/50; background: none 25%, "on" 50%, "in front of" 25%; "plain" said 20%."""
    draws = rng.random(4)
    style_form = "adj" if draws[0] < 0.5 else "with"
    background_form = None if draws[1] < 0.25 else ("on" if draws[1] < 0.75 else "in_front")
    return Wording(style_form, background_form, int(draws[2] * 6), bool(draws[3] < 0.2))


def caption(
    scene: Scene,
    rng: np.random.Generator | int,
    language: str = "en",
    paraphrase: bool | Iterable[str] = False,
) -> str:
    """A caption with wording drawn from ``rng`` (a generator or a seed)."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return describe(scene, language, random_wording(rng), paraphrase)


def caption_mix(
    scene: Scene,
    rng: np.random.Generator | int,
    mix: Mapping[tuple[str, bool], float] | None = None,
) -> str:
    """A training caption: language and paraphrasing drawn with the probabilities of ``mix``
    (default DEFAULT_MIX: 55% English, 15% English paraphrase, 6% each of de/fr/es/it/zh)."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    mix = DEFAULT_MIX if mix is None else mix
    options = list(mix)
    weights = np.asarray([mix[o] for o in options], dtype=np.float64)
    if weights.sum() <= 0 or (weights < 0).any():
        raise ValueError("caption_mix: probabilities must be >= 0 and not all zero")
    cumulative = np.cumsum(weights / weights.sum())
    index = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(options) - 1)
    language, paraphrase = options[index]
    return caption(scene, rng, language, paraphrase)
