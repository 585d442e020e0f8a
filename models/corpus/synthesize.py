"""Synthesize the speech corpus offline with espeak-ng: deterministic, from a seed.

    python -m models.corpus.synthesize                      # all committed splits -> models/corpus/
    python -m models.corpus.synthesize --split verification # one split -> models/corpus/verification/
    python -m models.corpus.synthesize --split train --minutes 60 --out artifacts/corpus-train

Each utterance is one generated English sentence (a small seeded grammar over a few hundred
common words, numbers spelled out, lowercased, only the characters of VOCABULARY) spoken by
espeak-ng with a voice, rate and pitch drawn from the split's pool, resampled to 16 kHz mono
by sox, padded with random leading/trailing silence, scaled by a random gain and mixed with
low-level white or pink noise. About 8 % of utterances are noise only (empty transcript).

A sentence belongs to exactly one split, decided by a hash of its text, so train,
calibration and verification never share a sentence whatever their sizes. Utterance `i` of a
split is generated from its own seed (split seed, i), so a larger run of a split starts with
exactly the utterances of a smaller one: the committed train sample is a prefix of the 60
minute training set. Running the script twice produces byte-identical files.

Output per split directory: `<split>-NNNN.flac` (16 kHz, mono, 16-bit FLAC) and `index.json`
(schema 1, see pipeline/audio/corpus.py), with the speech regions in samples computed from
the clean espeak signal before the noise is added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.audio.corpus import INDEX_SCHEMA, VOCABULARY

SAMPLE_RATE = 16_000
CORPUS_DIR = Path(__file__).resolve().parent
SEED = 20_240_611

# --------------------------------------------------------------------------------------------
# Splits: sizes of the committed corpus, sentence buckets and voice pools.

DEFAULT_MINUTES = {"train": 1.0, "calibration": 1.5, "verification": 5.6}
SPLIT_SEEDS = {"train": 1, "calibration": 2, "verification": 3}
# sha256(text) first byte -> split: train gets 70 %, calibration and verification 15 % each.
BUCKETS = {"train": range(0, 180), "calibration": range(180, 218), "verification": range(218, 256)}

# espeak-ng 1.51 "gmw" (built-in formant) English voices; mbrola voices are not used.
TRAIN_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3")
# Never heard in train: two accents and two voice variants, used by verification only.
HELD_OUT_VOICES = ("en-us-nyc", "en-gb-x-gbcwmd")
HELD_OUT_VARIANTS = ("m7", "f4")
TRAIN_RATES = (130, 190)        # words per minute, inclusive
HELD_OUT_RATES = (190, 205)     # faster than anything in train
PITCHES = (30, 70)
HELD_OUT_FRACTION = {"train": 0.0, "calibration": 0.0, "verification": 0.3}

NOISE_ONLY_FRACTION = 0.08
LEAD_SECONDS = (0.15, 0.9)
TRAIL_SECONDS = (0.15, 0.9)
NOISE_ONLY_SECONDS = (1.0, 3.5)
PEAK_DBFS = (-20.0, -3.0)       # peak level of the speech after the random gain
NOISE_DBFS = (-60.0, -40.0)     # RMS level of the background noise (see README: size budget)
MIN_SNR_DB = 15.0               # noise RMS at least this far below the speech RMS within its regions

# Speech regions: 10 ms frames of the clean, peak-normalised (-1 dBFS) espeak signal whose
# energy is above -45 dBFS; gaps shorter than 200 ms are merged.
VAD_FRAME = 160
VAD_THRESHOLD_DBFS = -45.0
VAD_MERGE_GAP = 3200

# --------------------------------------------------------------------------------------------
# The sentence grammar.

NOUNS = [  # (singular, plural)
    ("dog", "dogs"), ("cat", "cats"), ("house", "houses"), ("car", "cars"), ("tree", "trees"),
    ("book", "books"), ("table", "tables"), ("chair", "chairs"), ("window", "windows"),
    ("door", "doors"), ("garden", "gardens"), ("river", "rivers"), ("mountain", "mountains"),
    ("city", "cities"), ("street", "streets"), ("train", "trains"), ("bus", "buses"),
    ("boat", "boats"), ("letter", "letters"), ("phone", "phones"), ("computer", "computers"),
    ("picture", "pictures"), ("song", "songs"), ("story", "stories"), ("teacher", "teachers"),
    ("doctor", "doctors"), ("friend", "friends"), ("child", "children"), ("woman", "women"),
    ("man", "men"), ("student", "students"), ("farmer", "farmers"), ("driver", "drivers"),
    ("bird", "birds"), ("horse", "horses"), ("fish", "fish"), ("apple", "apples"),
    ("orange", "oranges"), ("cup", "cups"), ("bottle", "bottles"), ("box", "boxes"),
    ("key", "keys"), ("bag", "bags"), ("coat", "coats"), ("shoe", "shoes"), ("hat", "hats"),
    ("clock", "clocks"), ("lamp", "lamps"), ("bridge", "bridges"), ("road", "roads"),
    ("field", "fields"), ("forest", "forests"), ("island", "islands"), ("ship", "ships"),
    ("plane", "planes"), ("game", "games"), ("ball", "balls"), ("card", "cards"),
    ("map", "maps"), ("message", "messages"), ("meeting", "meetings"), ("plan", "plans"),
    ("idea", "ideas"), ("question", "questions"), ("answer", "answers"), ("number", "numbers"),
    ("word", "words"), ("name", "names"), ("room", "rooms"), ("kitchen", "kitchens"),
    ("office", "offices"), ("school", "schools"), ("shop", "shops"), ("market", "markets"),
    ("window seat", "window seats"), ("bicycle", "bicycles"), ("camera", "cameras"),
    ("sandwich", "sandwiches"), ("cake", "cakes"), ("egg", "eggs"), ("flower", "flowers"),
    ("stone", "stones"), ("wall", "walls"), ("light", "lights"), ("radio", "radios"),
    ("engine", "engines"), ("paper", "papers"), ("pencil", "pencils"), ("basket", "baskets"),
    ("neighbour", "neighbours"), ("brother", "brothers"), ("sister", "sisters"),
    ("mother", "mothers"), ("father", "fathers"), ("baby", "babies"), ("king", "kings"),
    ("queen", "queens"), ("window cleaner", "window cleaners"), ("guitar", "guitars"),
    ("letterbox", "letterboxes"), ("ticket", "tickets"), ("jacket", "jackets"),
]
ADJECTIVES = [
    "big", "small", "old", "new", "red", "blue", "green", "yellow", "black", "white", "quiet",
    "loud", "happy", "sad", "tall", "short", "long", "heavy", "light", "warm", "cold", "hot",
    "dark", "bright", "clean", "dirty", "empty", "full", "fast", "slow", "young", "strange",
    "friendly", "busy", "lazy", "clever", "famous", "hungry", "tired", "broken", "wooden",
    "little", "large", "early", "late", "soft", "hard", "sweet", "brown", "purple", "gentle",
    "careful", "noisy", "lucky", "tiny", "huge", "simple", "wet", "dry", "rich", "poor",
]
VERBS = [  # (base, third person singular, past)
    ("see", "sees", "saw"), ("find", "finds", "found"), ("take", "takes", "took"),
    ("bring", "brings", "brought"), ("carry", "carries", "carried"), ("open", "opens", "opened"),
    ("close", "closes", "closed"), ("paint", "paints", "painted"), ("clean", "cleans", "cleaned"),
    ("move", "moves", "moved"), ("watch", "watches", "watched"), ("follow", "follows", "followed"),
    ("push", "pushes", "pushed"), ("pull", "pulls", "pulled"), ("sell", "sells", "sold"),
    ("buy", "buys", "bought"), ("build", "builds", "built"), ("fix", "fixes", "fixed"),
    ("lose", "loses", "lost"), ("keep", "keeps", "kept"), ("hold", "holds", "held"),
    ("throw", "throws", "threw"), ("catch", "catches", "caught"), ("draw", "draws", "drew"),
    ("write", "writes", "wrote"), ("read", "reads", "read"), ("check", "checks", "checked"),
    ("visit", "visits", "visited"), ("like", "likes", "liked"), ("want", "wants", "wanted"),
    ("need", "needs", "needed"), ("help", "helps", "helped"), ("call", "calls", "called"),
    ("wash", "washes", "washed"), ("cook", "cooks", "cooked"), ("fill", "fills", "filled"),
    ("leave", "leaves", "left"), ("send", "sends", "sent"), ("count", "counts", "counted"),
    ("show", "shows", "showed"), ("hide", "hides", "hid"), ("remember", "remembers", "remembered"),
]
INTRANSITIVE = [  # (base, third person singular, past)
    ("sleep", "sleeps", "slept"), ("run", "runs", "ran"), ("walk", "walks", "walked"),
    ("sing", "sings", "sang"), ("wait", "waits", "waited"), ("laugh", "laughs", "laughed"),
    ("work", "works", "worked"), ("swim", "swims", "swam"), ("dance", "dances", "danced"),
    ("arrive", "arrives", "arrived"), ("stop", "stops", "stopped"), ("fall", "falls", "fell"),
    ("smile", "smiles", "smiled"), ("listen", "listens", "listened"), ("rest", "rests", "rested"),
    ("travel", "travels", "travelled"), ("shout", "shouts", "shouted"), ("play", "plays", "played"),
]
ADVERBS = [
    "quickly", "slowly", "quietly", "carefully", "happily", "loudly", "again", "today",
    "yesterday", "tomorrow", "tonight", "early", "late", "twice", "often", "sometimes",
    "at last", "at once", "every day", "last week", "next year", "this morning",
    "in the evening", "before lunch", "after dinner", "on sunday", "on monday", "on friday",
    "in the summer", "in winter", "right now", "later on", "all day", "without a word",
]
PLACES = [
    "the park", "the station", "the kitchen", "the garden", "the market", "the school",
    "the office", "the river", "the city", "the village", "the beach", "the library",
    "the hospital", "the bank", "the airport", "the forest", "the hotel", "the museum",
    "the corner shop", "the old bridge", "the big hall", "the top floor", "the car park",
]
PREPOSITIONS = ["in", "near", "behind", "next to", "outside", "inside", "under", "across from"]
NAMES = [
    "john", "mary", "peter", "anna", "david", "sarah", "tom", "lucy", "james", "emma",
    "michael", "laura", "paul", "kate", "robert", "alice", "daniel", "susan", "george", "helen",
    "frank", "nina", "oliver", "grace", "henry", "julia", "sam", "rose", "victor", "clara",
]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "purple", "orange", "grey"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth"]


def spell_number(n: int) -> str:
    """0..9999 in words, British style ("three hundred and twelve"), no hyphens."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + spell_number(rest))
    rest = n % 1000
    head = spell_number(n // 1000) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + spell_number(rest)


def spell_year(year: int) -> str:
    high, low = divmod(year, 100)
    if low == 0:
        return spell_number(high) + " hundred"
    return spell_number(high) + " " + (("oh " + ONES[low]) if low < 10 else spell_number(low))


class Grammar:
    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def c(self, seq):
        return self.r.choice(seq)

    def noun_phrase(self, plural: bool = False) -> str:
        noun = self.c(NOUNS)[1 if plural else 0]
        det = self.c(["the", "the", "my", "your", "our", "their", "this", "that"]) if not plural else \
            self.c(["the", "the", "my", "some", "these", "those", "all the", self.number(2, 20)])
        if not plural and det == "the" and self.r.random() < 0.15:
            det = "an" if noun[0] in "aeiou" else "a"
        if self.r.random() < 0.45:
            adj = self.c(ADJECTIVES)
            if det in ("a", "an"):
                det = "an" if adj[0] in "aeiou" else "a"
            return f"{det} {adj} {noun}"
        return f"{det} {noun}"

    def subject(self) -> tuple[str, bool]:
        """(text, third person singular)"""
        roll = self.r.random()
        if roll < 0.3:
            return self.c(NAMES), True
        if roll < 0.5:
            pronoun = self.c(["i", "you", "we", "they", "he", "she"])
            return pronoun, pronoun in ("he", "she")
        plural = self.r.random() < 0.3
        return self.noun_phrase(plural), not plural

    def number(self, lo: int = 0, hi: int = 100) -> str:
        return spell_number(self.r.randint(lo, hi))

    def time(self) -> str:
        hour = self.r.randint(1, 12)
        minute = self.c([0, 0, 15, 30, 45, self.r.randint(1, 59)])
        if minute == 0:
            return spell_number(hour) + " o'clock"
        if minute < 10:
            return spell_number(hour) + " oh " + ONES[minute]
        return spell_number(hour) + " " + spell_number(minute)

    def sentence(self) -> str:
        r, c = self.r, self.c
        template = r.randrange(16)
        subj, third = self.subject()
        verb = c(VERBS)
        intr = c(INTRANSITIVE)
        if template == 0:
            return f"{subj} {verb[2]} {self.noun_phrase(r.random() < 0.3)} {c(ADVERBS)}"
        if template == 1:
            return f"{subj} {verb[1] if third else verb[0]} {self.noun_phrase()} {c(PREPOSITIONS)} {c(PLACES)}"
        if template == 2:
            return f"{subj} {intr[2]} {c(PREPOSITIONS)} {c(PLACES)} {c(ADVERBS)}"
        if template == 3:
            return f"{subj} will {verb[0]} {self.noun_phrase(r.random() < 0.4)} {c(ADVERBS)}"
        if template == 4:
            aux = "doesn't" if third else "don't"
            return f"{subj} {aux} {verb[0]} {self.noun_phrase(r.random() < 0.4)}"
        if template == 5:
            n = r.randint(2, 999)
            return f"there are {spell_number(n)} {c(NOUNS)[1]} {c(PREPOSITIONS)} {c(PLACES)}"
        if template == 6:
            return f"please {verb[0]} {self.noun_phrase()} before {self.time()}"
        if template == 7:
            return f"where did {c(['you', 'we', 'they', c(NAMES)])} {verb[0]} {self.noun_phrase()}"
        if template == 8:
            return f"the train to {c(['london', 'paris', 'boston', 'dublin', 'glasgow', 'leeds', 'york', 'bristol'])} leaves at {self.time()}"
        if template == 9:
            return f"{c(NAMES)} was born on the {c(ORDINALS)} of {c(MONTHS)} {spell_year(r.randint(1900, 2023))}"
        if template == 10:
            return f"it's {c(['a', 'a very', 'quite a', 'such a'])} {c(ADJECTIVES)} {c(NOUNS)[0]} and {c(['i', 'we', 'they'])} {c(['like', 'love', 'want', 'need'])} it"
        if template == 11:
            return f"{subj} {intr[1] if third else intr[0]} {c(ADVERBS)} but {c(['never', 'rarely', 'always', 'usually'])} on {c(DAYS)}"
        if template == 12:
            return f"{c(['add', 'take away', 'write down', 'count'])} {spell_number(r.randint(1, 9999))} {c(['and', 'then', 'plus'])} {spell_number(r.randint(1, 99))}"
        if template == 13:
            return f"the {c(COLOURS)} {c(NOUNS)[0]} is {c(['in', 'on', 'under', 'behind'])} the {c(NOUNS)[0]} {c(ADVERBS)}"
        if template == 14:
            return f"i think {subj} {verb[2]} {self.noun_phrase()} {c(PREPOSITIONS)} {c(PLACES)}"
        return f"can {c(['you', 'we', 'they'])} {verb[0]} {self.noun_phrase(r.random() < 0.3)} {c(['for me', 'today', 'now', 'again', 'later'])}"


def clean_text(text: str) -> str:
    text = " ".join(text.lower().split())
    bad = sorted({ch for ch in text if ch not in VOCABULARY})
    if bad:
        raise AssertionError(f"grammar produced characters outside the vocabulary: {bad} in {text!r}")
    return text


def bucket(text: str) -> int:
    return hashlib.sha256(text.encode("utf-8")).digest()[0]


# --------------------------------------------------------------------------------------------
# Audio.


@dataclass(frozen=True)
class Voice:
    name: str
    rate: int
    pitch: int


def pick_voice(rng: random.Random, held_out: bool) -> Voice:
    if held_out:
        roll = rng.random()
        if roll < 0.4:
            variant = rng.choice(TRAIN_VARIANTS)
            name = rng.choice(HELD_OUT_VOICES) + (f"+{variant}" if variant else "")
        elif roll < 0.75:
            name = rng.choice(TRAIN_VOICES) + "+" + rng.choice(HELD_OUT_VARIANTS)
        else:
            name = rng.choice(HELD_OUT_VOICES) + "+" + rng.choice(HELD_OUT_VARIANTS)
        rate = rng.randint(*(HELD_OUT_RATES if rng.random() < 0.4 else TRAIN_RATES))
    else:
        variant = rng.choice(TRAIN_VARIANTS)
        name = rng.choice(TRAIN_VOICES) + (f"+{variant}" if variant else "")
        rate = rng.randint(*TRAIN_RATES)
    return Voice(name, rate, rng.randint(*PITCHES))


def espeak(text: str, voice: Voice, workdir: Path) -> np.ndarray:
    """Clean speech at 16 kHz, float64, DC removed, as espeak-ng and sox produce it."""
    wav = workdir / "espeak.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "-w", str(wav), text],
        check=True, capture_output=True,
    )
    raw = subprocess.run(
        ["sox", "-D", str(wav), "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(SAMPLE_RATE),
         "-", "highpass", "40"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def trim(x: np.ndarray, floor_dbfs: float = -60.0) -> np.ndarray:
    """Drop espeak's own leading/trailing near-silence; we add our own of random length."""
    loud = np.flatnonzero(np.abs(x) > 10 ** (floor_dbfs / 20))
    if len(loud) == 0:
        return x[:0]
    return x[max(0, loud[0] - 80): loud[-1] + 80]


def speech_regions(clean: np.ndarray) -> list[list[int]]:
    """Regions [start, end) of 10 ms frames above the threshold, short gaps merged."""
    n = len(clean) // VAD_FRAME
    if n == 0:
        return []
    frames = clean[: n * VAD_FRAME].reshape(n, VAD_FRAME)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    active = energy_db > VAD_THRESHOLD_DBFS
    regions: list[list[int]] = []
    for i in np.flatnonzero(active):
        start, end = int(i) * VAD_FRAME, (int(i) + 1) * VAD_FRAME
        if regions and start - regions[-1][1] < VAD_MERGE_GAP:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return regions


def noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white" or n < 2:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))  # 1/f power, flat below 20 Hz
    pink = np.fft.irfft(spectrum, n)
    return pink / (np.sqrt(np.mean(pink**2)) + 1e-12)


# Samples are quantised to 14 significant bits (16-bit values in steps of 4): the quantisation
# noise (about -89 dBFS) lies far under the added noise floor (-60 dBFS or more, which also
# dithers it), and FLAC stores the two always-zero low bits for free ("wasted bits"), which
# saves about a quarter of the corpus size.
QUANT_STEP = 4


def to_int16(x: np.ndarray) -> np.ndarray:
    levels = 32768 // QUANT_STEP
    return (np.clip(np.round(x * levels), -levels, levels - 1) * QUANT_STEP).astype(np.int16)


def make_utterance(split: str, index: int, sentences: set[str], workdir: Path) -> tuple[dict, np.ndarray]:
    seed = SEED * 1000 + SPLIT_SEEDS[split] * 100_000_000 + index
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    noise_only = rng.random() < NOISE_ONLY_FRACTION
    lead = int(rng.uniform(*LEAD_SECONDS) * SAMPLE_RATE)
    trail = int(rng.uniform(*TRAIL_SECONDS) * SAMPLE_RATE)
    noise_db = rng.uniform(*NOISE_DBFS)
    noise_kind = rng.choice(["white", "pink", "pink"])
    if noise_only:
        text, voice, regions = "", Voice("none", 0, 0), []
        clean = np.zeros(int(rng.uniform(*NOISE_ONLY_SECONDS) * SAMPLE_RATE))
    else:
        grammar = Grammar(rng)
        while True:  # a fresh sentence of this split's bucket
            text = clean_text(grammar.sentence())
            if bucket(text) in BUCKETS[split] and text not in sentences:
                break
        sentences.add(text)
        voice = pick_voice(rng, rng.random() < HELD_OUT_FRACTION[split])
        speech = trim(espeak(text, voice, workdir))
        speech *= 10 ** (-1.0 / 20) / (np.max(np.abs(speech)) + 1e-12)  # peak -1 dBFS
        clean = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
        regions = [[s + lead, e + lead] for s, e in speech_regions(speech)]
        peak_db = rng.uniform(*PEAK_DBFS)
        clean *= 10 ** ((peak_db + 1.0) / 20)
        active = np.concatenate([clean[s:e] for s, e in regions]) if regions else clean
        speech_db = 10 * np.log10(np.mean(active**2) + 1e-20)
        noise_db = min(noise_db, speech_db - MIN_SNR_DB)
    audio = clean + noise(nrng, len(clean), noise_kind) * 10 ** (noise_db / 20)
    pcm = to_int16(audio)
    entry = {
        "id": f"{split}-{index:04d}",
        "file": f"{split}-{index:04d}.flac",
        "text": text,
        "voice": voice.name,
        "rate": voice.rate,
        "pitch": voice.pitch,
        "seconds": round(len(pcm) / SAMPLE_RATE, 4),
        "speech": regions,
    }
    return entry, pcm


def dump_index(index: dict) -> str:
    """JSON with one utterance per line: compact, yet diffs line by line."""
    lines = [json.dumps(u, separators=(", ", ": ")) for u in index["utterances"]]
    head = json.dumps({k: v for k, v in index.items() if k != "utterances"})[:-1]
    return head + ', "utterances": [\n' + ",\n".join(lines) + "\n]}\n"


def synthesize_split(split: str, minutes: float, out_dir: Path, log=print) -> dict:
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    target = minutes * 60 * SAMPLE_RATE
    total = 0
    utterances: list[dict] = []
    sentences: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="speechport-corpus-") as tmp:
        while total < target:
            entry, pcm = make_utterance(split, len(utterances), sentences, Path(tmp))
            sf.write(out_dir / entry["file"], pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16",
                     compression_level=1.0)
            utterances.append(entry)
            total += len(pcm)
            if len(utterances) % 100 == 0:
                log(f"  {split}: {len(utterances)} utterances, {total / SAMPLE_RATE / 60:.1f} min")
    keep = {u["file"] for u in utterances}
    for stale in out_dir.glob(f"{split}-*.flac"):
        if stale.name not in keep:
            stale.unlink()
    index = {"schema": INDEX_SCHEMA, "sample_rate": SAMPLE_RATE, "utterances": utterances}
    (out_dir / "index.json").write_text(dump_index(index))
    size = sum((out_dir / f).stat().st_size for f in keep) + (out_dir / "index.json").stat().st_size
    log(f"{split}: {len(utterances)} utterances, {total / SAMPLE_RATE / 60:.2f} min, "
        f"{sum(1 for u in utterances if not u['text'])} noise-only, {size / 1e6:.2f} MB -> {out_dir}")
    return index


def missing_voices() -> list[str]:
    """Voices and variants of the pools that this espeak-ng lacks (it would silently fall back)."""
    listed = subprocess.run(["espeak-ng", "--voices=en"], check=True, capture_output=True, text=True).stdout
    languages = {line.split()[1] for line in listed.splitlines()[1:] if line.split()}
    variants = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    files = {line.split()[4].removeprefix("!v/") for line in variants.splitlines()[1:] if len(line.split()) > 4}
    voices = [v for v in TRAIN_VOICES + HELD_OUT_VOICES if v not in languages]
    return voices + [f"+{v}" for v in TRAIN_VARIANTS + HELD_OUT_VARIANTS if v and v not in files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.corpus.synthesize", description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=sorted(DEFAULT_MINUTES), help="one split (default: all three)")
    parser.add_argument("--minutes", type=float, help="audio to generate (default: the committed size)")
    parser.add_argument("--out", type=Path, help="output directory of the split (default: models/corpus/<split>)")
    args = parser.parse_args(argv)
    if args.split is None and (args.minutes is not None or args.out is not None):
        parser.error("--minutes and --out need --split")
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            print(f"error: `{tool}` not found on PATH (apt-get install espeak-ng sox)", file=sys.stderr)
            return 2
    missing = missing_voices()
    if missing:
        print(f"error: espeak-ng lacks the voices/variants {missing} (espeak-ng 1.51 has them)", file=sys.stderr)
        return 2
    for split in [args.split] if args.split else ["train", "calibration", "verification"]:
        minutes = args.minutes if args.minutes is not None else DEFAULT_MINUTES[split]
        synthesize_split(split, minutes, args.out or CORPUS_DIR / split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
