"""What the synthetic speakers say: keyword lists, FSC intents, phrases.

Authors
 * speechbrain-moe contributors 2026
"""

import random

# The ten command words and ten digits of Speech Commands v2 (its 35 words
# are all accepted: any word list works).
GSC_WORDS = (
    "yes no up down left right on off stop go "
    "zero one two three four five six seven eight nine"
).split()
DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
NATO_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey "
    "xray yankee zulu"
).split()

# Fluent Speech Commands' 31 intents (action, object, location) with phrasings.
_LOCATIONS = ["none", "kitchen", "bedroom", "washroom"]
_LANGUAGES = ["Chinese", "Korean", "English", "German"]


def _where(location):
    return "" if location == "none" else f" in the {location}"


def fsc_intents():
    """The 31 intents of Fluent Speech Commands, each with its phrasings.

    Returns
    -------
    list of tuple
        ``((action, object, location), [phrasing, ...])``.

    Example
    -------
    >>> intents = fsc_intents()
    >>> len(intents)
    31
    >>> intents[0]
    (('activate', 'lights', 'none'), ['turn on the lights', 'switch on the lights', 'lights on'])
    """
    out = []
    for loc in _LOCATIONS:
        w = _where(loc)
        out.append(
            (
                ("activate", "lights", loc),
                [f"turn on the lights{w}", f"switch on the lights{w}", f"lights on{w}"],
            )
        )
    for loc in _LOCATIONS:
        w = _where(loc)
        out.append(
            (
                ("deactivate", "lights", loc),
                [
                    f"turn off the lights{w}",
                    f"switch off the lights{w}",
                    f"lights off{w}",
                ],
            )
        )
    out.append(
        (
            ("increase", "volume", "none"),
            ["turn up the volume", "increase the volume", "make it louder"],
        )
    )
    out.append(
        (
            ("decrease", "volume", "none"),
            ["turn down the volume", "decrease the volume", "make it quieter"],
        )
    )
    for loc in _LOCATIONS:
        w = _where(loc)
        out.append(
            (
                ("increase", "heat", loc),
                [
                    f"turn up the heat{w}",
                    f"increase the temperature{w}",
                    f"make it warmer{w}",
                ],
            )
        )
    for loc in _LOCATIONS:
        w = _where(loc)
        out.append(
            (
                ("decrease", "heat", loc),
                [
                    f"turn down the heat{w}",
                    f"decrease the temperature{w}",
                    f"make it cooler{w}",
                ],
            )
        )
    out.append(
        (
            ("activate", "music", "none"),
            ["play the music", "turn on the music", "start the music"],
        )
    )
    out.append(
        (
            ("deactivate", "music", "none"),
            ["stop the music", "turn off the music", "pause the music"],
        )
    )
    out.append(
        (
            ("activate", "lamp", "none"),
            ["turn on the lamp", "switch the lamp on", "lamp on"],
        )
    )
    out.append(
        (
            ("deactivate", "lamp", "none"),
            ["turn off the lamp", "switch the lamp off", "lamp off"],
        )
    )
    for obj in ["newspaper", "juice", "socks", "shoes"]:
        out.append(
            (
                ("bring", obj, "none"),
                [f"bring me the {obj}", f"get me my {obj}", f"fetch the {obj}"],
            )
        )
    out.append(
        (
            ("change language", "none", "none"),
            ["change the language", "switch the language", "use another language"],
        )
    )
    for lang in _LANGUAGES:
        out.append(
            (
                ("change language", lang, "none"),
                [f"set the language to {lang}", f"switch to {lang}", f"I want {lang}"],
            )
        )
    return out


_NAMES = "anna ben carol david emma frank grace henry iris jack kate leo mary nick olivia peter".split()
_COLORS = "red blue green yellow black white brown purple orange grey".split()
_THINGS = "box cup book chair ball hat coat lamp phone key bag bottle".split()
_PLACES = "table floor shelf desk bed window door sofa".split()
_ANIMALS = "dog cat horse cow bird fish sheep duck".split()
_NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()
_ROOMS = "kitchen bedroom garden office hallway garage".split()
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_TEMPLATES = [
    "{name} put the {color} {thing} on the {place}",
    "please bring the {color} {thing} to the {room}",
    "the {color} {animal} is sleeping near the {place}",
    "set a timer for {number} minutes",
    "call {name} at {number} o'clock on {day}",
    "how many {thing}s are in the {room}",
    "{name} bought {number} {color} {thing}s on {day}",
    "the {animal} ran into the {room} with {name}",
    "move the {thing} from the {place} to the {room}",
    "{name} and {name2} will meet on {day} at {number}",
    "is the {color} {thing} under the {place}",
    "there are {number} {animal}s in the {room}",
]


def phrase_pool(count, seed=0):
    """``count`` distinct sentences from a small grammar (lower case).

    Twelve templates with names, colours, objects, places, animals, numbers,
    rooms and days: tens of thousands of distinct sentences over a
    vocabulary of about 120 words.

    Arguments
    ---------
    count : int
        Number of sentences.
    seed : int
        Random seed.

    Returns
    -------
    list of str

    Example
    -------
    >>> pool = phrase_pool(50)
    >>> len(pool), len(set(pool))
    (50, 50)
    """
    rng = random.Random(seed)
    seen, out = set(), []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(
                f"The phrase grammar cannot give {count} distinct sentences."
            )
        name, name2 = rng.sample(_NAMES, 2)
        text = rng.choice(_TEMPLATES).format(
            name=name,
            name2=name2,
            color=rng.choice(_COLORS),
            thing=rng.choice(_THINGS),
            place=rng.choice(_PLACES),
            animal=rng.choice(_ANIMALS),
            number=rng.choice(_NUMBERS),
            room=rng.choice(_ROOMS),
            day=rng.choice(_DAYS),
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def librispeech_transcript(text):
    """A sentence written as LibriSpeech writes transcripts (upper case).

    Arguments
    ---------
    text : str
        Sentence.

    Returns
    -------
    str

    Example
    -------
    >>> librispeech_transcript("call anna at two o'clock")
    "CALL ANNA AT TWO O'CLOCK"
    """
    return " ".join(text.upper().split())
