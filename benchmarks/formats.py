"""Office, web and mail formats: documents/s and peak RSS per format, candidate libraries on the same
files, and 1,000 mixed Office files against LlamaIndex's SimpleDirectoryReader. One run, each
measurement in a child process of its own (so its peak RSS is its own).

    .venv/bin/python benchmarks/formats.py [--per-format 200] [--mixed 1000] [--no-candidates]

Printed:
- per format (docx, pptx, xlsx, csv, html, eml): the filesystem source's `fetch` of `--per-format`
  generated files (listing, reading, parsing): documents/s, the child's RSS once its imports are done
  and its peak RSS (imports included);
- candidates on the same files (what the choice of library rests on): mammoth and markitdown for
  .docx, markitdown for .pptx/.xlsx, selectolax and markitdown for .html, each parsing bytes to text;
- `--mixed` .docx/.pptx/.xlsx files (a third each): vectormill's listing + parse against
  `SimpleDirectoryReader(...).load_data()` (its DocxReader, PptxReader, PandasExcelReader), as a ratio
  of times. The peer needs `pip install llama-index-core llama-index-readers-file docx2txt`; without it
  the ratio is left out, saying so.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sources_side_by_side import paragraph  # noqa: E402
from tests.office_corpus import html_page, write_csv, write_docx, write_eml, write_pptx, write_xlsx  # noqa: E402

FORMATS = ("docx", "pptx", "xlsx", "csv", "html", "eml")
CANDIDATES = {"docx": ("mammoth", "markitdown"), "pptx": ("markitdown",), "xlsx": ("markitdown",),
              "html": ("selectolax", "markitdown")}


def write_file(folder: Path, fmt: str, n: int) -> None:
    """A file of format `fmt` with some 400 words: paragraphs, slides, rows or a page with navigation."""
    texts = [paragraph(n * 10 + i) for i in range(10)]
    path = folder / f"doc{n:05d}.{fmt}"
    if fmt == "docx":
        write_docx(path, f"Document {n}", texts, table=[["Key", "Value"], ["item", str(n)]])
    elif fmt == "pptx":
        write_pptx(path, f"Deck {n}", [(f"Slide {i + 1}", text, texts[-1] if i == 0 else None)
                                        for i, text in enumerate(texts[:5])])
    elif fmt == "xlsx":
        write_xlsx(path, {"Items": [["name", "description"], *([f"item {i}", text] for i, text in enumerate(texts))]})
    elif fmt == "csv":
        write_csv(path, [["name", "description"], *([f"item {i}", text] for i, text in enumerate(texts))])
    elif fmt == "html":
        path.write_text(html_page(f"Page {n}", texts))
    else:
        attachment = io.BytesIO()
        write_docx(attachment, "Attached", texts[:2])  # type: ignore[arg-type]
        write_eml(path, f"Message {n}", "\n\n".join(texts[2:]), {"attached.docx": attachment.getvalue()})


CHILD = r'''
import json, resource, sys, time
from pathlib import Path
which, folder = sys.argv[1], Path(sys.argv[2])
files = sorted(p for p in folder.iterdir() if p.is_file())
if which == "vectormill":
    import docx, pptx, openpyxl, trafilatura, extract_msg  # imports are not what is measured
    from vectormill.connectors.filesystem import FilesystemSource
    from vectormill.connectors.settings import FilesystemSourceSettings
    source = FilesystemSource(FilesystemSourceSettings(name="bench", type="filesystem", root=folder))
    def run():
        return [len(source.fetch(ref).text) for ref in source.list_documents()]
elif which == "llamaindex":
    from llama_index.core import SimpleDirectoryReader
    import llama_index.readers.file, docx2txt, pptx, pandas, openpyxl
    def run():
        return [len(d.text) for d in SimpleDirectoryReader(input_dir=str(folder)).load_data(show_progress=False)]
elif which == "mammoth":
    import mammoth
    def run():
        return [len(mammoth.extract_raw_text(io_).value) for io_ in (open(p, "rb") for p in files)]
elif which == "markitdown":
    from markitdown import MarkItDown
    converter = MarkItDown()
    def run():
        return [len(converter.convert(str(p)).text_content) for p in files]
elif which == "selectolax":
    from selectolax.lexbor import LexborHTMLParser
    def run():
        out = []
        for p in files:
            tree = LexborHTMLParser(p.read_bytes())
            for node in tree.css("nav, header, footer, script, style"):
                node.decompose()
            out.append(len(tree.body.text(separator="\n")))
        return out
def hwm_kib():  # VmHWM: this process's peak since its exec (ru_maxrss would carry the parent's from the fork)
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:")).split()[1])
def rss_kib():
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024
before = rss_kib()
started = time.perf_counter()
lengths = run()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "documents": len(lengths), "characters": sum(lengths),
                  "rss_after_imports_mib": before / 1024,
                  "peak_mib": hwm_kib() / 1024}))
'''


def measure(which: str, folder: Path) -> dict | str:
    done = subprocess.run([sys.executable, "-c", CHILD, which, str(folder)], capture_output=True, text=True)
    if done.returncode:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_line() -> str:
    from vectormill.embedding.precision import cpu_flags

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return f"CPU: {model}; flags: {' '.join(f for f in wanted if f in cpu_flags()) or 'none of ' + str(wanted)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-format", type=int, default=200)
    parser.add_argument("--mixed", type=int, default=1000)
    parser.add_argument("--no-candidates", action="store_true")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as scratch:
        print(f"\n{args.per_format} files per format; vectormill's filesystem source (list + fetch):")
        print(f"{'format':8} {'library':12} {'docs/s':>8} {'RSS after imports':>18} {'peak RSS':>10} {'characters':>11}")
        for fmt in FORMATS:
            folder = Path(scratch, fmt)
            folder.mkdir()
            for n in range(args.per_format):
                write_file(folder, fmt, n)
            rows = [("vectormill", measure("vectormill", folder))]
            if not args.no_candidates:
                rows += [(name, measure(name, folder)) for name in CANDIDATES.get(fmt, ())]
            for name, result in rows:
                if isinstance(result, str):
                    print(f"{fmt:8} {name:12} not measured: {result}")
                else:
                    print(f"{fmt:8} {name:12} {result['documents'] / result['seconds']:8.1f} "
                          f"{result['rss_after_imports_mib']:14.0f} MiB {result['peak_mib']:6.0f} MiB "
                          f"{result['characters']:11d}")
        mixed = Path(scratch, "mixed")
        mixed.mkdir()
        for n in range(args.mixed):
            write_file(mixed, ("docx", "pptx", "xlsx")[n % 3], n)
        ours, peer = measure("vectormill", mixed), measure("llamaindex", mixed)
        print(f"\n{args.mixed} mixed Office files (.docx/.pptx/.xlsx):")
        print(f"  vectormill (list + parse): {ours['seconds']:.2f} s, {ours['documents']} documents, "
              f"peak RSS {ours['peak_mib']:.0f} MiB")
        if isinstance(peer, str):
            print(f"  LlamaIndex SimpleDirectoryReader: not measured ({peer}); install llama-index-core "
                  "llama-index-readers-file docx2txt for it")
        else:
            print(f"  LlamaIndex SimpleDirectoryReader.load_data: {peer['seconds']:.2f} s, {peer['documents']} "
                  f"documents, peak RSS {peer['peak_mib']:.0f} MiB")
            print(f"  ratio: vectormill's time = {ours['seconds'] / peer['seconds']:.2f} x LlamaIndex's")


if __name__ == "__main__":
    main()
