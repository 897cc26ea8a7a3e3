"""`make bench ONLY=cases`: full-text search of teaching cases (FTS5, ranked) beside the same
queries matched with LIKE over the same cases table, in the same run and the same index.

The cases are generated (a fixed seed): titles, histories, findings and discussions drawn from a
vocabulary of radiology words and filler, as long as real teaching-file cases. Both searches go
through ``Archive.list_cases`` (a page of 100 summaries and the total), so the figures are what
``GET /cases?q=`` costs the archive.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from appliance.archive import BODY_REGIONS, CATEGORIES, DIFFICULTIES, Archive, CaseQuery

TERMS = ["pneumothorax", "effusion", "consolidation", "atelectasis", "nodule", "mass", "cavitation",
         "bronchiectasis", "emphysema", "fibrosis", "edema", "cardiomegaly", "aneurysm", "dissection", "embolism",
         "thrombosis", "stenosis", "occlusion", "infarct", "hemorrhage", "hematoma", "contusion", "fracture",
         "dislocation", "osteomyelitis", "sarcoma", "metastasis", "lymphoma", "glioma", "meningioma",
         "schwannoma", "abscess", "cyst", "hamartoma", "adenoma", "carcinoma", "appendicitis", "diverticulitis",
         "cholecystitis", "pancreatitis", "hepatitis", "cirrhosis", "splenomegaly", "hydronephrosis", "calculus",
         "obstruction", "intussusception", "volvulus", "perforation", "pneumoperitoneum", "ascites", "hernia",
         "enhancing", "ring", "calcified", "spiculated", "lobulated", "necrotic", "hyperdense", "hypodense",
         "hyperintense", "restricted", "diffusion", "contrast", "arterial", "venous", "portal", "delayed",
         "axial", "coronal", "sagittal", "left", "right", "bilateral", "upper", "lower"]
FILLER = ["the", "of", "and", "with", "in", "a", "on", "no", "is", "was", "seen", "there", "at", "to", "from",
          "by", "an", "as", "for", "this", "that"]
_SYLLABLES = ["ba", "ce", "di", "fo", "gu", "ha", "ke", "li", "mo", "nu", "pa", "re", "si", "to", "vu", "xa",
              "ze", "ry", "lo", "mi"]

QUERIES = ["pneumothorax", "ring enhancing", '"ring enhancing"', "metast", "glioma restricted diffusion",
           "fracture", "hemorr", "pulmonary embolism", "aneurysm dissection", "calcified nodule", "cyst",
           "appendicitis perforation", "sarcoma", "lymph", "spiculated mass", "hydronephrosis calculus",
           "œdème", "portal venous", "abscess", "volvulus"]


def _vocabulary(rng: random.Random, n: int = 5000) -> list[str]:
    """Made-up words standing for the rest of a radiology text's vocabulary (Zipf-drawn below)."""
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 5))) for _ in range(n)]


def _text(rng: random.Random, words: int, vocab: list[str], weights: list[float]) -> str:
    """Filler words, a Zipf-distributed vocabulary, and the named terms one word in fifty: each
    term is in a few percent of the cases, as a diagnosis is in a real teaching file."""
    out = []
    for w in rng.choices(vocab, weights, k=words):
        r = rng.random()
        out.append(rng.choice(TERMS) if r < 0.02 else rng.choice(FILLER) if r < 0.4 else w)
    return " ".join(out)


def generated_case(rng: random.Random, i: int, vocab: list[str], weights: list[float]) -> dict:
    def text(words: int) -> str:
        return _text(rng, words, vocab, weights)

    return {"Title": " ".join([rng.choice(TERMS), *rng.choices(vocab, weights, k=3)]), "History": text(40),
            "Question": text(10), "Findings": text(60), "Diagnosis": f"{rng.choice(TERMS)} {rng.choice(vocab)}",
            "DifferentialDiagnosis": text(15), "Discussion": text(200), "TeachingPoints": text(30),
            "Keywords": [rng.choice(TERMS), *rng.sample(vocab, 2)],
            "Category": rng.choice(CATEGORIES), "BodyRegion": rng.choice(BODY_REGIONS),
            "Difficulty": rng.choice(DIFFICULTIES), "Collections": [f"year{i % 7}"],
            "State": "published" if i % 3 else "draft", "Unknown": i % 10 == 0}


def _pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] if len(xs) > 1 else xs[0]


async def _run(n: int, reps: int, work: Path) -> None:
    a = Archive(storage_dir=work, index_dir=work)
    await a.open()
    try:
        rng = random.Random(19)
        vocab = _vocabulary(rng)
        weights = [1 / (k + 1) for k in range(len(vocab))]
        t0 = time.perf_counter()
        for i in range(n):
            await a.create_case(generated_case(rng, i, vocab, weights))
        made = time.perf_counter() - t0
        # per query, its runs; a query's figure is the median of its runs (a spike of the shared
        # machine is not a query's cost), and p50/p95 are over the 20 queries' figures
        runs: dict[tuple[bool, str], list[float]] = {}
        hits: dict[bool, list[int]] = {False: [], True: []}
        for scan in (False, True):
            for q in QUERIES:       # warm the page cache for both alike
                await a.list_cases(CaseQuery(text=q, scan=scan))
        for _ in range(reps):
            for scan in (False, True):
                for q in QUERIES:
                    t = time.perf_counter()
                    _, total = await a.list_cases(CaseQuery(text=q, scan=scan))
                    runs.setdefault((scan, q), []).append((time.perf_counter() - t) * 1000)
                    hits[scan].append(total)
        student = []
        for q in QUERIES:
            taken = []
            for _ in range(reps):
                t = time.perf_counter()
                await a.list_cases(CaseQuery(text=q, students=True))
                taken.append((time.perf_counter() - t) * 1000)
            student.append(statistics.median(taken))
        filtered = []
        for q in QUERIES:
            taken = []
            for _ in range(reps):
                t = time.perf_counter()
                await a.list_cases(CaseQuery(text=q, students=True, category="Chest"))
                taken.append((time.perf_counter() - t) * 1000)
            filtered.append(statistics.median(taken))
    finally:
        await a.close()
    fts = [statistics.median(runs[(False, q)]) for q in QUERIES]
    like = [statistics.median(runs[(True, q)]) for q in QUERIES]
    print(f"\ncase search: {n} generated cases ({made:.0f} s to create through the archive), {len(QUERIES)} queries "
          f"(each the median of {reps} runs), a page of 100 summaries and the total each")
    print(f"  FTS5 (ranked)      p50 {_pct(fts, 50):7.2f} ms   p95 {_pct(fts, 95):7.2f} ms   "
          f"median matches {statistics.median(hits[False]):.0f}")
    print(f"  LIKE scan          p50 {_pct(like, 50):7.2f} ms   p95 {_pct(like, 95):7.2f} ms   "
          f"median matches {statistics.median(hits[True]):.0f} (substrings, unranked)")
    print(f"  FTS / LIKE         p95 {_pct(fts, 95) / _pct(like, 95):.3f}x   "
          f"(targets: p95 <= 20 ms and <= 0.1x the LIKE scan)")
    print(f"  FTS as a student (published; unknown cases, 1 in 10, by their question only): "
          f"p50 {_pct(student, 50):.2f} ms p95 {_pct(student, 95):.2f} ms")
    print(f"  FTS as a student, category Chest: p95 {_pct(filtered, 95):.2f} ms", flush=True)


def bench_case_search(reps: int, n: int = 10_000) -> None:
    work = Path(tempfile.mkdtemp(prefix="pipacs-bench-cases-"))
    try:
        asyncio.run(_run(n, max(reps, 5), work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
